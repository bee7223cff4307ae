//! Ranking, on SQLite and PostgreSQL: among 1,000 notes of varied filler
//! text — some sharing a word or two with the question — the one note
//! that holds the fact comes first for a question about it, in the
//! question's own words (not the note's: "listen" finds "listens").

use super::tests::{clock, index, note, postgres, sqlite};
use super::*;
use crate::config::MemoryConfig;
use crate::store::Store;

const FILLER_NOTES: usize = 1000;

const SUBJECTS: &[&str] = &[
    "The billing team",
    "Our largest customer",
    "The mobile app",
    "The nightly backup",
    "The marketing site",
    "The support rota",
    "The office printer",
    "The data warehouse",
    "The onboarding guide",
    "The release train",
];
const VERBS: &[&str] = &[
    "prefers",
    "was moved to",
    "depends on",
    "should avoid",
    "is reviewed with",
    "was migrated from",
    "reports weekly on",
    "needs approval for",
];
const OBJECTS: &[&str] = &[
    "invoices in euros",
    "the Tuesday meeting",
    "a shared calendar",
    "the legacy CRM",
    "quarterly planning",
    "the design system",
    "cold storage",
    "two-factor login",
    "the vendor contract",
    "customer feedback",
];
/// Each filler note carries at most one word of the question, so that
/// the question matters, not just any of its words.
const NEAR_MISSES: &[&str] = &[
    "",
    "",
    "on the staging cluster",
    "for the analytics database",
    "through the harbour port",
    "",
];

/// A filler note: a sentence from the lists above, chosen by `n`.
fn filler(rng: &mut fastrand::Rng, n: usize) -> String {
    let pick = |rng: &mut fastrand::Rng, list: &[&'static str]| list[rng.usize(..list.len())];
    format!(
        "{} {} {} {} (note {n}).",
        pick(rng, SUBJECTS),
        pick(rng, VERBS),
        pick(rng, OBJECTS),
        pick(rng, NEAR_MISSES),
    )
}

const FACT: &str = "The staging database listens on port 6543 behind the bastion host.";

async fn the_fact_ranks_first_among_a_thousand_notes(store: Store) {
    let config = MemoryConfig {
        max_notes_per_tenant: 2 * FILLER_NOTES,
        ..MemoryConfig::default()
    };
    let index = index(store, config, &clock());
    let mut rng = fastrand::Rng::with_seed(7);
    for n in 0..FILLER_NOTES {
        if n == FILLER_NOTES / 2 {
            index
                .remember(NewNote {
                    tags: vec!["infrastructure".into()],
                    ..note("acme", "", FACT)
                })
                .await
                .unwrap();
        }
        index
            .remember(note("acme", "", &filler(&mut rng, n)))
            .await
            .unwrap();
    }
    // Another tenant holds the same fact: never part of acme's answer.
    index.remember(note("globex", "", FACT)).await.unwrap();

    let found = index
        .recall(
            "acme",
            "",
            "Which port does the staging database listen on?",
            5,
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 5, "near misses fill the rest");
    assert_eq!(found[0].note.text, FACT);
    assert!(found.iter().all(|found| found.note.tenant == "acme"));
    assert!(
        found[0].score > found[1].score,
        "first by a margin: {} vs {}",
        found[0].score,
        found[1].score
    );
    assert!(found.iter().all(|found| (0.0..1.0).contains(&found.score)));
}

#[tokio::test]
async fn memory_ranks_the_fact_first_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    the_fact_ranks_first_among_a_thousand_notes(sqlite(&dir).await).await;
}

#[tokio::test]
async fn memory_ranks_the_fact_first_on_postgres() {
    let server = agentmesh_testkit::postgres::shared().await;
    the_fact_ranks_first_among_a_thousand_notes(postgres(&server).await).await;
}
