//! `VerifyChain`: walks each chain in sequence order and checks every event.
//!
//! For each stored row: the body must decode, the indexed columns must be
//! the ones the body gives (an edited column is an edited event), the hash
//! must be the one recomputed over the chain, the stored `previous_hash` and
//! the body (CONTENT_MISMATCH otherwise), and `previous_hash` must be the
//! hash of the chain's previous event — or the chain's anchor for its first
//! retained event (LINK_MISMATCH otherwise: an event was deleted, inserted or
//! reordered). A walk to the end also checks that the last event is the
//! chain head recorded at write time, so deleting the newest events shows.
//!
//! A walk reads the chain in pages of [`ROWS_PER_PAGE`] rows, one
//! statement each outside any transaction (it holds no lock and a database
//! connection only while a page is read), and checks each page on the
//! blocking thread pool, so hashing never holds up the request threads.
//! How many walks run at once, and that a chain is walked by one call at a
//! time, is [`gate`]'s.
//!
//! This proves the log unaltered against anyone who cannot also rewrite the
//! chain heads; publishing the heads elsewhere (e.g. into another system's
//! log) extends that to a database administrator.

use agentmesh_kit::time::{micros_of, timestamp_from_micros};
use agentmesh_proto::audit::v1::{
    AuditEvent, ChainBreak, ChainBreakKind, VerifyChainRequest, VerifyChainResponse,
};
use prost::Message;
use tonic::Status;

mod gate;

pub(crate) use gate::VerifyGate;

use crate::access::Reader;
use crate::event::{Columns, content_hash, cursor};
use crate::store::{ChainHead, Store, StoredRow};

/// Rows read per query during a walk.
const ROWS_PER_PAGE: usize = 500;

/// Verifies the chains a request names, of those `reader` may read.
pub(crate) async fn verify(
    store: &Store,
    request: &VerifyChainRequest,
    reader: &Reader,
    gate: &VerifyGate,
) -> Result<VerifyChainResponse, Status> {
    let chains = reader.chains(&request.chain, store.chains().await)?;
    let names: Vec<String> = chains.iter().map(|head| head.chain.clone()).collect();
    let _pass = gate.enter(&names)?;
    let start_us = request.start_time.as_ref().map(micros_of);
    let end_us = request.end_time.as_ref().map(micros_of);
    let mut response = VerifyChainResponse {
        ok: true,
        ..Default::default()
    };
    for head in &chains {
        response.chains_checked += 1;
        let (checked, broken) = walk(store, head, start_us, end_us).await?;
        response.events_checked += checked;
        if let Some(broken) = broken {
            response.ok = false;
            response.first_bad_event = Some(broken);
            break;
        }
    }
    Ok(response)
}

async fn walk(
    store: &Store,
    head: &ChainHead,
    start_us: Option<i64>,
    end_us: Option<i64>,
) -> Result<(i64, Option<ChainBreak>), Status> {
    let (mut position, mut expected_previous) = match start_us {
        Some(start) => store
            .chain_position_before(&head.chain, start)
            .await?
            .unwrap_or((head.anchor_seq, head.anchor_hash.clone())),
        None => (head.anchor_seq, head.anchor_hash.clone()),
    };
    let mut checked = 0;
    let mut last_seen: Option<StoredRow> = None;
    loop {
        let mut rows = store
            .chain_rows(&head.chain, position, end_us, ROWS_PER_PAGE)
            .await?;
        let mut full = rows.len() == ROWS_PER_PAGE;
        // Events appended since the head was read are not this check's: the
        // walk ends at the head it compares with.
        if rows.last().is_some_and(|row| row.seq > head.head_seq) {
            rows.retain(|row| row.seq <= head.head_seq);
            full = false;
        }
        let page_head = head.clone();
        let page =
            tokio::task::spawn_blocking(move || check_page(&page_head, rows, expected_previous))
                .await
                .map_err(|err| Status::internal(format!("the chain check stopped: {err}")))?;
        checked += page.checked;
        if page.broken.is_some() {
            return Ok((checked, page.broken));
        }
        expected_previous = page.expected_previous;
        if let Some(last) = page.last {
            position = last.seq;
            last_seen = Some(last);
        }
        if !full {
            break;
        }
    }
    // Walked to the end: the last event must be the head written with it.
    if end_us.is_none() && head.head_seq > head.anchor_seq {
        let at_head = last_seen
            .as_ref()
            .is_some_and(|row| row.seq == head.head_seq && row.hash == head.head_hash);
        if !at_head {
            let message = format!(
                "the chain's newest event should be #{} with hash {}, but the walk ended at {}: events at the end of the chain were deleted",
                head.head_seq,
                head.head_hash,
                last_seen
                    .as_ref()
                    .map_or("its anchor".to_owned(), |row| format!("#{}", row.seq)),
            );
            return Ok((
                checked,
                Some(ChainBreak {
                    event_id: last_seen
                        .as_ref()
                        .map(|r| r.event_id.clone())
                        .unwrap_or_default(),
                    cursor: cursor(head.head_seq),
                    chain: head.chain.clone(),
                    kind: ChainBreakKind::LinkMismatch as i32,
                    expected_hash: head.head_hash.clone(),
                    actual_hash: last_seen.map(|r| r.hash).unwrap_or_default(),
                    time: None,
                    message,
                }),
            ));
        }
    }
    Ok((checked, None))
}

/// What checking one page found.
struct Page {
    checked: i64,
    broken: Option<ChainBreak>,
    /// The hash the next row must link to.
    expected_previous: String,
    last: Option<StoredRow>,
}

/// Checks a page of rows in order, stopping at the first problem.
fn check_page(head: &ChainHead, rows: Vec<StoredRow>, mut expected_previous: String) -> Page {
    let mut checked = 0;
    let mut last = None;
    for row in rows {
        checked += 1;
        if let Some(broken) = check(head, &row, &expected_previous) {
            return Page {
                checked,
                broken: Some(broken),
                expected_previous,
                last,
            };
        }
        expected_previous.clone_from(&row.hash);
        last = Some(row);
    }
    Page {
        checked,
        broken: None,
        expected_previous,
        last,
    }
}

/// The problem with one row, if any.
fn check(head: &ChainHead, row: &StoredRow, expected_previous: &str) -> Option<ChainBreak> {
    let broken =
        |kind: ChainBreakKind, expected: String, actual: String, message: String| ChainBreak {
            event_id: row.event_id.clone(),
            cursor: cursor(row.seq),
            chain: head.chain.clone(),
            kind: kind as i32,
            expected_hash: expected,
            actual_hash: actual,
            time: Some(timestamp_from_micros(row.columns.time_us)),
            message,
        };
    let content = |message: String| {
        Some(broken(
            ChainBreakKind::ContentMismatch,
            content_hash(&row.columns.chain, &row.previous_hash, &row.body),
            row.hash.clone(),
            message,
        ))
    };
    let Ok(event) = AuditEvent::decode(row.body.as_slice()) else {
        return content(format!(
            "event #{} ({}): its stored body does not decode",
            row.seq, row.event_id
        ));
    };
    if event.event_id != row.event_id || Columns::of(&event) != row.columns {
        return content(format!(
            "event #{} ({}): its indexed columns were changed and no longer match its content",
            row.seq, row.event_id
        ));
    }
    let recomputed = content_hash(&row.columns.chain, &row.previous_hash, &row.body);
    if recomputed != row.hash {
        return content(format!(
            "event #{} ({}): its content was altered after it was recorded",
            row.seq, row.event_id
        ));
    }
    if row.previous_hash != expected_previous {
        return Some(broken(
            ChainBreakKind::LinkMismatch,
            expected_previous.to_owned(),
            row.previous_hash.clone(),
            format!(
                "event #{} ({}): it does not link to the event before it: an event was deleted, inserted or reordered",
                row.seq, row.event_id
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use agentmesh_proto::audit::v1::{AuditEvent, EventType};
    use agentmesh_storage::{Database, StorageConfig};

    use super::*;
    use crate::event::Prepared;
    use crate::store::MIGRATIONS;

    fn prepared(index: usize, id: &str) -> Prepared {
        Prepared::new(
            index,
            AuditEvent {
                event_id: id.into(),
                tenant: "acme".into(),
                r#type: EventType::ToolCall as i32,
                ..AuditEvent::default()
            },
            SystemTime::now(),
        )
    }

    /// Events recorded while a check walks a chain are not a break: the
    /// walk ends at the head it read.
    #[tokio::test]
    async fn events_appended_after_the_head_was_read_are_not_a_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            data_dir: dir.path().to_owned(),
            ..StorageConfig::default()
        };
        let db = Database::connect(&config, "audit").await.unwrap();
        db.migrate(&MIGRATIONS).await.unwrap();
        let store = Store::new(db);
        store
            .append(&[prepared(0, "e1"), prepared(1, "e2")])
            .await
            .unwrap();
        let heads = store.chains().await.unwrap();
        store
            .append(&[prepared(0, "e3"), prepared(1, "e4")])
            .await
            .unwrap();
        for head in &heads {
            let (checked, broken) = walk(&store, head, None, None).await.unwrap();
            assert!(broken.is_none(), "{broken:?}");
            assert_eq!(checked, 2);
        }
    }
}
