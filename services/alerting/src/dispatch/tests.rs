//! Dispatcher tests run on tokio's paused clock: waiting for a report lets
//! virtual time run to the next timer, so the elapsed times asserted are
//! exact and nothing sleeps for real. The wall clock the dispatcher reads
//! follows the virtual clock, plus an offset a test can move by hand.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use futures::future::BoxFuture;
use tokio::time::{Instant, timeout};

use super::*;
use crate::model::labels;
use crate::model::{
    AlertState, Delivery, Fingerprint, IntegrationId, Notification, NotifiedEntry, NotifiedKey,
    PersistError,
};
use crate::routing::RouteConfig;

// ---- fakes ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Deliver,
    Fail,
    Delay(Duration),
    /// Retries until the deadline, then gives up.
    HangUntilDeadline,
}

#[derive(Debug, Clone)]
struct Sent {
    receiver: String,
    notification: Notification,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct NotifierState {
    integrations: HashMap<String, Vec<IntegrationId>>,
    /// Per "receiver/integration/group key" or "receiver/integration": what
    /// the next deliveries do (then Deliver).
    script: HashMap<String, VecDeque<Behaviour>>,
    sent: Vec<Sent>,
}

/// Records every delivery; behaves as scripted.
#[derive(Debug, Clone, Default)]
struct FakeNotifier(Arc<Mutex<NotifierState>>);

fn integration(kind: &'static str, index: usize, send_resolved: bool) -> IntegrationId {
    IntegrationId {
        kind,
        index,
        send_resolved,
    }
}

impl FakeNotifier {
    fn with(receivers: &[(&str, Vec<IntegrationId>)]) -> Self {
        let notifier = Self::default();
        notifier.lock().integrations = receivers
            .iter()
            .map(|(name, integrations)| ((*name).to_owned(), integrations.clone()))
            .collect();
        notifier
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NotifierState> {
        self.0.lock().unwrap()
    }

    fn script(&self, receiver: &str, integration: &str, behaviours: &[Behaviour]) {
        self.lock().script.insert(
            format!("{receiver}/{integration}"),
            behaviours.iter().copied().collect(),
        );
    }

    fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }
}

impl Notifier for FakeNotifier {
    fn integrations(&self, receiver: &str) -> Vec<IntegrationId> {
        self.lock()
            .integrations
            .get(receiver)
            .cloned()
            .unwrap_or_default()
    }

    fn deliver(
        &self,
        receiver: &str,
        integration: IntegrationId,
        notification: Notification,
        deadline: Instant,
    ) -> BoxFuture<'static, Delivery> {
        let behaviour = {
            let mut state = self.lock();
            let specific = format!(
                "{receiver}/{}/{}",
                integration.name(),
                notification.group_key
            );
            let general = format!("{receiver}/{}", integration.name());
            [specific, general]
                .iter()
                .find_map(|key| state.script.get_mut(key).and_then(VecDeque::pop_front))
                .unwrap_or(Behaviour::Deliver)
        };
        let state = Arc::clone(&self.0);
        let receiver = receiver.to_owned();
        Box::pin(async move {
            let error = match behaviour {
                Behaviour::Deliver => None,
                Behaviour::Fail => Some("HTTP 500 Internal Server Error".to_owned()),
                Behaviour::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    None
                }
                Behaviour::HangUntilDeadline => {
                    tokio::time::sleep_until(deadline).await;
                    Some("gave up at the deadline".to_owned())
                }
            };
            state.lock().unwrap().sent.push(Sent {
                receiver,
                notification,
                deadline,
            });
            Delivery {
                attempts: if error.is_some() { 3 } else { 1 },
                error,
            }
        })
    }
}

/// A notification log over a map that survives a dispatcher (a restart).
#[derive(Debug, Clone, Default)]
struct MemoryLog {
    entries: Arc<Mutex<HashMap<NotifiedKey, NotifiedEntry>>>,
    broken: Arc<Mutex<bool>>,
}

impl MemoryLog {
    fn entry(&self, receiver: &str, integration: &str, group_key: &str) -> Option<NotifiedEntry> {
        self.entries
            .lock()
            .unwrap()
            .get(&NotifiedKey {
                receiver: receiver.into(),
                integration: integration.into(),
                group_key: group_key.into(),
            })
            .cloned()
    }

    fn break_it(&self, broken: bool) {
        *self.broken.lock().unwrap() = broken;
    }
}

impl NotificationLog for MemoryLog {
    fn get(&self, key: &NotifiedKey) -> BoxFuture<'_, Result<Option<NotifiedEntry>, PersistError>> {
        let result = if *self.broken.lock().unwrap() {
            Err(PersistError("database is locked".into()))
        } else {
            Ok(self.entries.lock().unwrap().get(key).cloned())
        };
        Box::pin(async move { result })
    }

    fn put(
        &self,
        key: NotifiedKey,
        entry: NotifiedEntry,
    ) -> BoxFuture<'_, Result<(), PersistError>> {
        let result = if *self.broken.lock().unwrap() {
            Err(PersistError("database is locked".into()))
        } else {
            self.entries.lock().unwrap().insert(key, entry);
            Ok(())
        };
        Box::pin(async move { result })
    }
}

// ---- harness --------------------------------------------------------------

const GROUP_WAIT: Duration = Duration::from_secs(30);
const GROUP_INTERVAL: Duration = Duration::from_secs(300);
const REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Root: receiver "team", by alertname, 30s/5m/4h. Child 0: critical →
/// "pager", by alertname and tool, group_wait 10s, continue. Child 1:
/// tool="chat-only" → "chat".
fn test_route() -> Arc<Route> {
    let config = RouteConfig {
        receiver: Some("team".into()),
        group_by: Some(vec!["alertname".into()]),
        group_wait: Some(GROUP_WAIT),
        group_interval: Some(GROUP_INTERVAL),
        repeat_interval: Some(REPEAT_INTERVAL),
        routes: vec![
            RouteConfig {
                receiver: Some("pager".into()),
                matchers: vec![r#"severity="critical""#.into()],
                group_by: Some(vec!["alertname".into(), "tool".into()]),
                group_wait: Some(secs(10)),
                continue_matching: true,
                ..RouteConfig::default()
            },
            RouteConfig {
                receiver: Some("chat".into()),
                matchers: vec![r#"tool=~"files|shell""#.into()],
                ..RouteConfig::default()
            },
        ],
        ..RouteConfig::default()
    };
    let receivers = ["team", "pager", "chat"].map(String::from);
    Arc::new(Route::compile(&config, &receivers).unwrap())
}

/// The wall clock: follows tokio's (paused) clock from a fixed base, plus
/// an offset moved by hand.
#[derive(Debug, Clone)]
struct TestClock {
    base: SystemTime,
    origin: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl TestClock {
    fn new() -> Self {
        Self {
            base: SystemTime::UNIX_EPOCH + secs(1_700_000_000),
            origin: Instant::now(),
            offset: Arc::default(),
        }
    }

    fn now(&self) -> SystemTime {
        self.base + self.origin.elapsed() + *self.offset.lock().unwrap()
    }

    fn jump(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }

    fn clock(&self) -> Clock {
        let this = self.clone();
        Clock::from_fn(move || this.now())
    }
}

struct Harness {
    dispatcher: Dispatcher,
    notifier: FakeNotifier,
    log: MemoryLog,
    reports: mpsc::UnboundedReceiver<DeliveryReport>,
    clock: TestClock,
    start: Instant,
}

impl Harness {
    fn new(notifier: FakeNotifier) -> Self {
        Self::with(notifier, MemoryLog::default(), DispatcherLimits::default())
    }

    fn with(notifier: FakeNotifier, log: MemoryLog, limits: DispatcherLimits) -> Self {
        let clock = TestClock::new();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher::start_with(
            limits,
            test_route(),
            Arc::new(notifier.clone()),
            Arc::new(log.clone()),
            reports_tx,
            "http://alerting.example".into(),
            clock.clock(),
        );
        Self {
            dispatcher,
            notifier,
            log,
            reports,
            clock,
            start: Instant::now(),
        }
    }

    /// A firing alert that starts now.
    fn firing(&self, pairs: &[(&str, &str)]) -> Alert {
        let now = self.clock.now();
        let mut alert = Alert::new(labels(pairs), AlertState::Firing, now);
        alert.starts_at = Some(now);
        alert
    }

    fn resolve(&self, alert: &Alert) -> Alert {
        let now = self.clock.now();
        Alert {
            state: AlertState::Resolved,
            ends_at: Some(now),
            updated_at: now,
            ..alert.clone()
        }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The next report, and when it came (virtual time since start).
    async fn report(&mut self) -> (Duration, DeliveryReport) {
        let report = timeout(secs(48 * 3600), self.reports.recv())
            .await
            .expect("a report within two days")
            .expect("the dispatcher is running");
        (self.elapsed(), report)
    }

    /// True when no report comes for `how_long`.
    async fn quiet_for(&mut self, how_long: Duration) -> bool {
        timeout(how_long, self.reports.recv()).await.is_err()
    }

    /// Waits until no delivery is running and the dispatcher has taken
    /// account of the finished ones.
    async fn settle(&self) -> DispatcherStats {
        for _ in 0..1000 {
            let stats = self.dispatcher.stats().await;
            if stats.deliveries == 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("deliveries did not settle");
    }

    /// Sleeps until `at` after start.
    async fn until(&self, at: Duration) {
        tokio::time::sleep_until(self.start + at).await;
    }
}

fn team(send_resolved: bool) -> FakeNotifier {
    FakeNotifier::with(&[("team", vec![integration("webhook", 0, send_resolved)])])
}

// ---- timing and grouping --------------------------------------------------

#[tokio::test(start_paused = true)]
async fn five_alerts_of_a_group_make_one_notification_after_group_wait() {
    let mut h = Harness::new(team(true));
    let alerts: Vec<Alert> = (1..=5)
        .map(|i| h.firing(&[("alertname", "ToolFailing"), ("tool", &format!("t{i}"))]))
        .collect();
    for alert in alerts.iter().rev() {
        h.dispatcher.put(alert.clone());
    }
    // Putting the same version again changes nothing.
    h.dispatcher.put(alerts[0].clone());
    let stats = h.dispatcher.stats().await;
    assert_eq!((stats.groups, stats.alerts), (1, 5));

    let (at, report) = h.report().await;
    assert_eq!(at, GROUP_WAIT);
    assert_eq!(report.receiver, "team");
    assert_eq!((report.kind, report.index), ("webhook", 0));
    assert_eq!(report.group_key, r#"{}:{alertname="ToolFailing"}"#);
    assert_eq!(report.status, "firing");
    assert_eq!(report.alert_count, 5);
    assert_eq!((report.attempts, report.error), (1, None));

    let sent = h.notifier.sent();
    assert_eq!(sent.len(), 1);
    let notification = &sent[0].notification;
    assert_eq!(notification.receiver, "team");
    assert_eq!(
        notification.group_labels,
        labels(&[("alertname", "ToolFailing")])
    );
    assert_eq!(notification.external_url, "http://alerting.example");
    // Sorted by labels.
    let tools: Vec<&str> = notification
        .alerts
        .iter()
        .map(|a| a.labels["tool"].as_str())
        .collect();
    assert_eq!(tools, ["t1", "t2", "t3", "t4", "t5"]);
    // The deadline is the next flush.
    assert_eq!(sent[0].deadline - h.start, GROUP_WAIT + GROUP_INTERVAL);

    let entry = h
        .log
        .entry("team", "webhook[0]", r#"{}:{alertname="ToolFailing"}"#)
        .unwrap();
    assert_eq!(entry.firing, alerts.iter().map(|a| a.fingerprint).collect());
    assert!(entry.resolved.is_empty());
    assert_eq!(entry.time, Some(h.clock.base + GROUP_WAIT));

    // Nothing changes: nothing more until the repeat interval.
    assert!(h.quiet_for(secs(3600)).await);
}

#[tokio::test(start_paused = true)]
async fn changes_wait_for_group_interval_and_unchanged_groups_repeat_after_repeat_interval() {
    let mut h = Harness::new(team(true));
    h.dispatcher
        .put(h.firing(&[("alertname", "A"), ("n", "1")]));
    assert_eq!(h.report().await.0, GROUP_WAIT);

    // A new alert of the group a minute later waits for the next flush
    // (group_interval after the first), not for group_wait.
    h.until(secs(60)).await;
    h.dispatcher
        .put(h.firing(&[("alertname", "A"), ("n", "2")]));
    let (at, report) = h.report().await;
    assert_eq!(at, GROUP_WAIT + GROUP_INTERVAL);
    assert_eq!(report.alert_count, 2);

    // Unchanged, it is notified again once the entry (written at 330s) is
    // older than 4h at a flush: flushes come every 5m from 30s, so at
    // 330s + 4h the entry is exactly 4h old (not older), and the repeat
    // goes out at the one after, as Alertmanager does.
    let (at, report) = h.report().await;
    assert_eq!(at, secs(330) + REPEAT_INTERVAL + GROUP_INTERVAL);
    assert_eq!(report.alert_count, 2);
}

#[tokio::test(start_paused = true)]
async fn an_alert_that_started_long_ago_is_notified_at_once() {
    let mut h = Harness::new(team(true));
    let mut alert = h.firing(&[("alertname", "Old")]);
    alert.starts_at = Some(h.clock.now() - secs(3600));
    h.dispatcher.put(alert);
    let (at, _) = h.report().await;
    assert_eq!(at, Duration::ZERO);

    // Once flushed, a group keeps to its interval even for old alerts.
    h.until(secs(10)).await;
    let mut other = h.firing(&[("alertname", "Old"), ("n", "2")]);
    other.starts_at = Some(h.clock.now() - secs(3600));
    h.dispatcher.put(other);
    assert_eq!(h.report().await.0, GROUP_INTERVAL);
}

#[tokio::test(start_paused = true)]
async fn routes_with_continue_notify_each_receiver_with_its_own_group() {
    let notifier = FakeNotifier::with(&[
        ("team", vec![integration("webhook", 0, true)]),
        ("pager", vec![integration("pagerduty", 0, false)]),
        ("chat", vec![integration("slack", 0, true)]),
    ]);
    let mut h = Harness::new(notifier);
    h.dispatcher.put(h.firing(&[
        ("alertname", "ToolFailing"),
        ("severity", "critical"),
        ("tool", "files"),
    ]));
    // The pager route has no tool label to group by here: left out.
    h.dispatcher
        .put(h.firing(&[("alertname", "Down"), ("severity", "critical")]));
    assert_eq!(h.dispatcher.stats().await.groups, 3);

    let mut reports = Vec::new();
    for _ in 0..3 {
        let (at, report) = h.report().await;
        reports.push((at, report.receiver, report.group_key));
    }
    reports.sort();
    assert_eq!(
        reports,
        [
            (
                secs(10),
                "pager".to_owned(),
                r#"{}/{severity="critical"}:{alertname="Down"}"#.to_owned()
            ),
            (
                secs(10),
                "pager".to_owned(),
                r#"{}/{severity="critical"}:{alertname="ToolFailing", tool="files"}"#.to_owned()
            ),
            (
                GROUP_WAIT,
                "chat".to_owned(),
                r#"{}/{tool=~"files|shell"}:{alertname="ToolFailing"}"#.to_owned()
            ),
        ]
    );
    // The team receiver (root) gets nothing: a child took every alert.
    assert!(h.notifier.sent().iter().all(|sent| sent.receiver != "team"));
}

#[tokio::test(start_paused = true)]
async fn pending_alerts_are_ignored() {
    let h = Harness::new(team(true));
    h.dispatcher.put(Alert::new(
        labels(&[("alertname", "A")]),
        AlertState::Pending,
        h.clock.now(),
    ));
    assert_eq!(h.dispatcher.stats().await.groups, 0);
}

#[tokio::test(start_paused = true)]
async fn groups_are_bounded() {
    let limits = DispatcherLimits {
        max_groups: 2,
        ..DispatcherLimits::default()
    };
    let h = Harness::with(team(true), MemoryLog::default(), limits);
    for name in ["A", "B", "C", "D"] {
        h.dispatcher.put(h.firing(&[("alertname", name)]));
    }
    // An alert of an existing group is still taken.
    h.dispatcher
        .put(h.firing(&[("alertname", "A"), ("n", "2")]));
    let stats = h.dispatcher.stats().await;
    assert_eq!((stats.groups, stats.alerts, stats.dropped), (2, 3, 2));
}

// ---- resolved notices -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_resolved_notice_follows_the_firing_one_and_the_group_goes() {
    let mut h = Harness::new(team(true));
    let alert = h.firing(&[("alertname", "A")]);
    h.dispatcher.put(alert.clone());
    assert_eq!(h.report().await.1.status, "firing");

    h.until(secs(60)).await;
    h.dispatcher.put(h.resolve(&alert));
    let (at, report) = h.report().await;
    assert_eq!(at, GROUP_WAIT + GROUP_INTERVAL);
    assert_eq!((report.status, report.alert_count), ("resolved", 1));
    let sent = h.notifier.sent();
    assert_eq!(sent[1].notification.alerts[0].state, AlertState::Resolved);

    let stats = h.settle().await;
    assert_eq!((stats.groups, stats.alerts), (0, 0));
    let entry = h
        .log
        .entry("team", "webhook[0]", r#"{}:{alertname="A"}"#)
        .unwrap();
    assert!(entry.firing.is_empty());
    assert_eq!(entry.resolved, [alert.fingerprint].into());
    assert!(h.quiet_for(REPEAT_INTERVAL * 2).await);
}

#[tokio::test(start_paused = true)]
async fn without_send_resolved_nothing_is_sent_but_the_entry_is_cleared() {
    let mut h = Harness::new(team(false));
    let alert = h.firing(&[("alertname", "A")]);
    h.dispatcher.put(alert.clone());
    h.dispatcher
        .put(h.firing(&[("alertname", "A"), ("n", "2")]));
    assert_eq!(h.report().await.1.alert_count, 2);

    // One of two resolves: the firing one is not news; the resolved one
    // is not wanted.
    h.until(secs(60)).await;
    h.dispatcher.put(h.resolve(&alert));
    h.until(secs(331)).await;
    assert!(h.notifier.sent().len() == 1);
    // The resolved alert left the group after that flush.
    assert_eq!(h.settle().await.alerts, 1);

    // The other resolves too: no delivery, but the entry forgets the
    // firing alerts, and the group goes.
    let other = h.firing(&[("alertname", "A"), ("n", "2")]);
    let mut other_resolved = h.resolve(&other);
    other_resolved.starts_at = Some(h.clock.base);
    h.dispatcher.put(other_resolved.clone());
    assert!(h.quiet_for(secs(400)).await);
    assert_eq!(h.notifier.sent().len(), 1);
    let entry = h
        .log
        .entry("team", "webhook[0]", r#"{}:{alertname="A"}"#)
        .unwrap();
    assert!(entry.firing.is_empty());
    assert_eq!(entry.resolved, [other_resolved.fingerprint].into());
    assert_eq!(h.settle().await.groups, 0);

    // When it fires again, that is news again.
    let start = h.elapsed();
    h.dispatcher.put(h.firing(&[("alertname", "A")]));
    let (at, report) = h.report().await;
    assert_eq!(at - start, GROUP_WAIT);
    assert_eq!((report.status, report.alert_count), ("firing", 1));
}

#[tokio::test(start_paused = true)]
async fn alerts_that_fire_and_resolve_between_flushes_are_not_notified() {
    let mut h = Harness::new(team(true));
    let alert = h.firing(&[("alertname", "A")]);
    h.dispatcher.put(alert.clone());
    h.until(secs(5)).await;
    h.dispatcher.put(h.resolve(&alert));
    // Never notified as firing: no resolved notice either.
    assert!(h.quiet_for(secs(3600)).await);
    assert_eq!(h.settle().await.groups, 0);
}

// ---- muting ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn muted_alerts_are_not_notified() {
    let mut h = Harness::new(team(true));
    let mut silenced = h.firing(&[("alertname", "A"), ("n", "1")]);
    silenced.silenced_by = vec!["silence-1".into()];
    let mut inhibited = h.firing(&[("alertname", "A"), ("n", "2")]);
    inhibited.inhibited_by = vec![Fingerprint(7)];
    h.dispatcher.put(silenced.clone());
    h.dispatcher.put(inhibited);
    assert!(h.quiet_for(secs(3600)).await);
    assert_eq!(h.dispatcher.stats().await.alerts, 2);

    // An unmuted alert joins: only it is notified, at the next flush on
    // the group's 5m grid (30s + 12 × 5m).
    let free = h.firing(&[("alertname", "A"), ("n", "3")]);
    h.dispatcher.put(free.clone());
    let (at, report) = h.report().await;
    assert_eq!(at, secs(3630));
    assert_eq!(report.alert_count, 1);
    assert_eq!(
        h.notifier.sent()[0].notification.alerts,
        std::slice::from_ref(&free)
    );

    // The silence ends: the alert is news.
    let unsilenced = Alert {
        silenced_by: Vec::new(),
        ..silenced
    };
    h.dispatcher.put(unsilenced.clone());
    let (at, report) = h.report().await;
    assert_eq!(at, secs(3630) + GROUP_INTERVAL);
    assert_eq!(report.alert_count, 2);
    assert_eq!(h.notifier.sent()[1].notification.alerts, [unsilenced, free]);
}

// ---- failures -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_is_retried_at_the_next_flush_and_the_others_are_not_repeated() {
    let notifier = FakeNotifier::with(&[(
        "team",
        vec![
            integration("webhook", 0, true),
            integration("email", 0, true),
        ],
    )]);
    notifier.script("team", "webhook[0]", &[Behaviour::Fail]);
    let mut h = Harness::new(notifier);
    h.dispatcher.put(h.firing(&[("alertname", "A")]));

    let mut first = [h.report().await, h.report().await];
    first.sort_by_key(|(_, report)| report.kind);
    assert_eq!(first[0].0, GROUP_WAIT);
    assert_eq!(
        (first[0].1.kind, first[0].1.error.is_none()),
        ("email", true)
    );
    assert_eq!(first[1].0, GROUP_WAIT);
    assert_eq!(first[1].1.kind, "webhook");
    assert_eq!(
        first[1].1.error.as_deref(),
        Some("HTTP 500 Internal Server Error")
    );
    assert_eq!(first[1].1.attempts, 3);
    let key = r#"{}:{alertname="A"}"#;
    assert!(h.log.entry("team", "webhook[0]", key).is_none());

    // Only the failed one is tried again.
    let (at, report) = h.report().await;
    assert_eq!(at, GROUP_WAIT + GROUP_INTERVAL);
    assert_eq!((report.kind, report.error), ("webhook", None));
    assert!(h.log.entry("team", "webhook[0]", key).is_some());
    assert!(h.quiet_for(secs(3600)).await);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_integration_holds_up_neither_other_integrations_nor_other_groups() {
    let notifier = FakeNotifier::with(&[(
        "team",
        vec![
            integration("webhook", 0, true),
            integration("slack", 0, true),
        ],
    )]);
    notifier.script(
        "team",
        r#"webhook[0]/{}:{alertname="A"}"#,
        &[Behaviour::HangUntilDeadline],
    );
    let mut h = Harness::new(notifier);
    h.dispatcher.put(h.firing(&[("alertname", "A")]));
    h.dispatcher.put(h.firing(&[("alertname", "B")]));

    // Slack for A, both for B: on time.
    let mut on_time = Vec::new();
    for _ in 0..3 {
        let (at, report) = h.report().await;
        assert_eq!(at, GROUP_WAIT);
        assert!(report.error.is_none());
        on_time.push((report.group_key, report.kind));
    }
    on_time.sort();
    assert_eq!(
        on_time,
        [
            (r#"{}:{alertname="A"}"#.to_owned(), "slack"),
            (r#"{}:{alertname="B"}"#.to_owned(), "slack"),
            (r#"{}:{alertname="B"}"#.to_owned(), "webhook"),
        ]
    );
    // The hanging one gives up at its deadline, the next flush…
    let (at, report) = h.report().await;
    assert_eq!(at, GROUP_WAIT + GROUP_INTERVAL);
    assert_eq!(
        (report.kind, report.group_key.as_str()),
        ("webhook", r#"{}:{alertname="A"}"#)
    );
    assert!(report.error.is_some());
    // …and a later flush delivers it (the one at its deadline, or the one
    // after if the delivery ended a hair after that flush began).
    let (at, report) = h.report().await;
    assert!(
        at == GROUP_WAIT + GROUP_INTERVAL || at == GROUP_WAIT + GROUP_INTERVAL * 2,
        "{at:?}"
    );
    assert_eq!((report.kind, report.error), ("webhook", None));
    assert!(h.quiet_for(secs(3600)).await);
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_notification_log_does_not_silence_alerting() {
    let mut h = Harness::new(team(true));
    h.log.break_it(true);
    h.dispatcher.put(h.firing(&[("alertname", "A")]));
    let (at, report) = h.report().await;
    assert_eq!(at, GROUP_WAIT);
    assert!(report.error.is_none());
    // Nothing recorded, so it is sent again at the next flush…
    assert_eq!(h.report().await.0, GROUP_WAIT + GROUP_INTERVAL);
    // …until the log works again.
    h.log.break_it(false);
    assert_eq!(h.report().await.0, GROUP_WAIT + GROUP_INTERVAL * 2);
    assert!(h.quiet_for(secs(3600)).await);
}

#[tokio::test(start_paused = true)]
async fn a_receiver_without_integrations_drops_its_groups_quietly() {
    let mut h = Harness::new(FakeNotifier::default());
    let alert = h.firing(&[("alertname", "A")]);
    h.dispatcher.put(alert.clone());
    h.until(secs(40)).await;
    h.dispatcher.put(h.resolve(&alert));
    assert!(h.quiet_for(secs(400)).await);
    assert_eq!(h.settle().await.groups, 0);
}

// ---- resolved alerts and changes during a flush ---------------------------

#[tokio::test(start_paused = true)]
async fn an_alert_that_changes_while_its_resolution_is_delivered_stays() {
    let notifier = team(true);
    let mut h = Harness::new(notifier.clone());
    let alert = h.firing(&[("alertname", "A")]);
    h.dispatcher.put(alert.clone());
    assert_eq!(h.report().await.0, GROUP_WAIT);

    // The resolved notice takes a minute to deliver; meanwhile the alert
    // fires again.
    notifier.script("team", "webhook[0]", &[Behaviour::Delay(secs(60))]);
    h.until(secs(100)).await;
    h.dispatcher.put(h.resolve(&alert));
    h.until(secs(360)).await;
    let refired = Alert {
        updated_at: h.clock.now(),
        ..h.firing(&[("alertname", "A")])
    };
    h.dispatcher.put(refired);
    let (at, report) = h.report().await;
    assert_eq!((at, report.status), (secs(390), "resolved"));
    // It was not removed with the resolved version: it is notified as
    // firing at the next flush.
    let stats = h.settle().await;
    assert_eq!((stats.groups, stats.alerts), (1, 1));
    let (at, report) = h.report().await;
    assert_eq!(
        (at, report.status),
        (GROUP_WAIT + GROUP_INTERVAL * 2, "firing")
    );
}

#[tokio::test(start_paused = true)]
async fn resolved_alerts_stay_until_their_notice_is_delivered() {
    let notifier = team(true);
    let mut h = Harness::new(notifier.clone());
    let alert = h.firing(&[("alertname", "A")]);
    h.dispatcher.put(alert.clone());
    h.report().await;
    notifier.script("team", "webhook[0]", &[Behaviour::Fail]);
    h.until(secs(100)).await;
    h.dispatcher.put(h.resolve(&alert));
    let (at, report) = h.report().await;
    assert_eq!(
        (at, report.status, report.error.is_some()),
        (secs(330), "resolved", true)
    );
    assert_eq!(h.settle().await.groups, 1);
    let (at, report) = h.report().await;
    assert_eq!(
        (at, report.status, report.error),
        (secs(630), "resolved", None)
    );
    assert_eq!(h.settle().await.groups, 0);
}

// ---- restart and shutdown -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_restarted_dispatcher_does_not_notify_again_what_was_notified() {
    let log = MemoryLog::default();
    let notifier = team(true);
    let mut first = Harness::with(notifier.clone(), log.clone(), DispatcherLimits::default());
    let alert = first.firing(&[("alertname", "A")]);
    first.dispatcher.put(alert.clone());
    assert_eq!(first.report().await.0, GROUP_WAIT);
    first.dispatcher.clone().shutdown().await;

    // Ten minutes later a new process starts over the same log; its alert
    // state puts the alert again (it started long ago: flushed at once).
    tokio::time::sleep(secs(600)).await;
    let mut second = Harness::with(notifier.clone(), log, DispatcherLimits::default());
    second.clock.jump(first.elapsed());
    second.dispatcher.put(alert.clone());
    assert!(second.quiet_for(secs(3600)).await);
    assert_eq!(notifier.sent().len(), 1);
    assert_eq!(second.dispatcher.stats().await.groups, 1);

    // The repeat still comes 4h after the first notification (at 30s of
    // the first run's wall clock), at a flush of the second run (every 5m
    // from its start at 630s).
    let (at, _) = second.report().await;
    assert_eq!(at, secs(14_100));
    let wall = second
        .clock
        .now()
        .duration_since(second.clock.base)
        .unwrap();
    assert_eq!(wall, secs(14_730));
    assert!(wall > GROUP_WAIT + REPEAT_INTERVAL);
    assert_eq!(notifier.sent().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_deliveries_in_flight_but_not_forever() {
    let notifier = FakeNotifier::with(&[("team", vec![integration("webhook", 0, true)])]);
    notifier.script("team", "webhook[0]", &[Behaviour::Delay(secs(5))]);
    let mut h = Harness::new(notifier.clone());
    h.dispatcher.put(h.firing(&[("alertname", "A")]));
    h.until(secs(31)).await;
    h.dispatcher.clone().shutdown().await;
    assert_eq!(h.elapsed(), secs(35));
    assert!(h.report().await.1.error.is_none());
    // Stopped: puts are ignored, stats are empty, nothing more is sent.
    h.dispatcher.put(h.firing(&[("alertname", "B")]));
    assert_eq!(h.dispatcher.stats().await, DispatcherStats::default());

    let limits = DispatcherLimits {
        shutdown_grace: secs(10),
        ..DispatcherLimits::default()
    };
    notifier.script("team", "webhook[0]", &[Behaviour::HangUntilDeadline]);
    let h = Harness::with(notifier.clone(), MemoryLog::default(), limits);
    h.dispatcher.put(h.firing(&[("alertname", "A")]));
    h.until(secs(31)).await;
    h.dispatcher.clone().shutdown().await;
    assert_eq!(h.elapsed(), secs(41));
    // Dropping the last handle stops the task too.
    let h = Harness::new(team(true));
    h.dispatcher.put(h.firing(&[("alertname", "A")]));
    drop(h.dispatcher);
    tokio::time::sleep(secs(60)).await;
    assert!(h.notifier.sent().is_empty());
}

// ---- needsUpdate ----------------------------------------------------------

#[test]
fn needs_update_is_alertmanagers() {
    let now = SystemTime::UNIX_EPOCH + secs(1_000_000);
    let repeat = secs(3600);
    let set = |ids: &[u64]| {
        ids.iter()
            .map(|id| Fingerprint(*id))
            .collect::<BTreeSet<_>>()
    };
    let entry = |firing: &[u64], resolved: &[u64], age: u64| NotifiedEntry {
        firing: set(firing),
        resolved: set(resolved),
        time: Some(now - secs(age)),
    };
    // (entry, firing, resolved, send_resolved, expected, why)
    let cases = [
        (None, set(&[1]), set(&[]), true, true, "new firing"),
        (
            None,
            set(&[]),
            set(&[1]),
            true,
            false,
            "only resolved, never notified",
        ),
        (
            Some(entry(&[1], &[], 10)),
            set(&[1, 2]),
            set(&[]),
            true,
            true,
            "a new firing alert",
        ),
        (
            Some(entry(&[1, 2], &[], 10)),
            set(&[1]),
            set(&[2]),
            false,
            false,
            "one resolved, not wanted",
        ),
        (
            Some(entry(&[1, 2], &[], 10)),
            set(&[1]),
            set(&[2]),
            true,
            true,
            "one resolved, wanted",
        ),
        (
            Some(entry(&[1], &[2], 10)),
            set(&[1]),
            set(&[2]),
            true,
            false,
            "resolved already told",
        ),
        (
            Some(entry(&[1], &[], 10)),
            set(&[]),
            set(&[1]),
            false,
            true,
            "all resolved, always",
        ),
        (
            Some(entry(&[], &[1], 10)),
            set(&[]),
            set(&[1]),
            true,
            false,
            "all resolved already told",
        ),
        (
            Some(entry(&[], &[1], 10)),
            set(&[]),
            set(&[]),
            true,
            false,
            "nothing at all",
        ),
        (
            Some(entry(&[1], &[], 3599)),
            set(&[1]),
            set(&[]),
            true,
            false,
            "repeat not due",
        ),
        (
            Some(entry(&[1], &[], 3600)),
            set(&[1]),
            set(&[]),
            true,
            false,
            "repeat exactly due: strict",
        ),
        (
            Some(entry(&[1], &[], 3601)),
            set(&[1]),
            set(&[]),
            true,
            true,
            "repeat due",
        ),
        (
            Some(NotifiedEntry {
                firing: set(&[1]),
                resolved: set(&[]),
                time: None,
            }),
            set(&[1]),
            set(&[]),
            true,
            true,
            "no time recorded",
        ),
    ];
    for (entry, firing, resolved, send_resolved, expected, why) in cases {
        assert_eq!(
            needs_update(
                entry.as_ref(),
                &firing,
                &resolved,
                send_resolved,
                repeat,
                now
            ),
            expected,
            "{why}"
        );
    }
}

#[test]
fn a_manual_clock_moves_only_when_told() {
    let start = SystemTime::UNIX_EPOCH + secs(100);
    let manual = ManualClock::new(start);
    let clock = manual.clock();
    assert_eq!(clock.now(), start);
    manual.advance(secs(5));
    assert_eq!(clock.now(), start + secs(5));
    manual.set(start);
    assert_eq!(clock.now(), start);
    assert!(format!("{clock:?}").starts_with("Clock"));
    assert!(Clock::default().now() > start);
}
