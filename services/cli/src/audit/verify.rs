//! `agentmesh audit verify`: asks the audit service to check its hash
//! chains and says whether they are intact, or where the first break is
//! (exit code 1).

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::audit::v1::{self as pb, audit_service_client::AuditServiceClient};

use super::filter::build_filter;
use super::flags::{Selectors, VerifyArgs};
use crate::commands::print_status;
use crate::time::proto_utc_text;

pub(super) async fn verify(
    mut client: AuditServiceClient<CliChannel>,
    args: VerifyArgs,
) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&Selectors::default(), args.range.since, args.range.until)
        .map_err(anyhow::Error::msg)?;
    let answer = match client
        .verify_chain(pb::VerifyChainRequest {
            chain: args.chain.unwrap_or_default(),
            start_time: filter.start_time,
            end_time: filter.end_time,
        })
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status) => return Ok(print_status(&status)),
    };
    let (text, intact) = verdict(&answer);
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    out.flush()?;
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What a verification found, as text, and whether the chains are intact.
fn verdict(answer: &pb::VerifyChainResponse) -> (String, bool) {
    let checked = format!(
        "{} events in {} chains checked",
        answer.events_checked, answer.chains_checked
    );
    if answer.ok {
        return (format!("chain intact: {checked}\n"), true);
    }
    let bad = answer.first_bad_event.clone().unwrap_or_default();
    let kind = match pb::ChainBreakKind::try_from(bad.kind) {
        Ok(pb::ChainBreakKind::ContentMismatch) => {
            "content mismatch (the event was altered)".to_owned()
        }
        Ok(pb::ChainBreakKind::LinkMismatch) => {
            "link mismatch (an event was deleted, inserted or reordered)".to_owned()
        }
        Ok(pb::ChainBreakKind::Unspecified) => "unspecified".to_owned(),
        Err(_) => bad.kind.to_string(),
    };
    let mut text = format!(
        "chain broken: event {} in chain {}\n",
        bad.event_id, bad.chain
    );
    let _ = writeln!(text, "  kind:     {kind}");
    let _ = writeln!(text, "  expected: {}", bad.expected_hash);
    let _ = writeln!(text, "  actual:   {}", bad.actual_hash);
    let _ = writeln!(text, "  time:     {}", proto_utc_text(bad.time.as_ref()));
    if !bad.cursor.is_empty() {
        let _ = writeln!(text, "  cursor:   {}", bad.cursor);
    }
    let _ = writeln!(text, "  message:  {}", bad.message);
    let _ = writeln!(text, "({checked})");
    (text, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::time;

    #[test]
    fn verdicts() {
        let (text, intact) = verdict(&pb::VerifyChainResponse {
            ok: true,
            events_checked: 1234,
            chains_checked: 2,
            first_bad_event: None,
        });
        assert!(intact);
        assert_eq!(text, "chain intact: 1234 events in 2 chains checked\n");

        let (text, intact) = verdict(&pb::VerifyChainResponse {
            ok: false,
            events_checked: 10,
            chains_checked: 1,
            first_bad_event: Some(pb::ChainBreak {
                event_id: "e-7".to_owned(),
                cursor: String::new(),
                chain: "acme".to_owned(),
                kind: pb::ChainBreakKind::LinkMismatch.into(),
                expected_hash: "aa".to_owned(),
                actual_hash: "bb".to_owned(),
                time: time("2026-11-21T10:00:00Z"),
                message: "previous_hash does not match event e-6".to_owned(),
            }),
        });
        assert!(!intact);
        assert_eq!(
            text,
            "chain broken: event e-7 in chain acme
  kind:     link mismatch (an event was deleted, inserted or reordered)
  expected: aa
  actual:   bb
  time:     2026-11-21T10:00:00Z
  message:  previous_hash does not match event e-6
(10 events in 1 chains checked)
"
        );
    }
}
