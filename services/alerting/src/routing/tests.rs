use std::time::SystemTime;

use agentmesh_kit::{LogConfig, ServerConfig};
use serde::{Deserialize, Serialize};

use super::*;
use crate::model::{Alert, AlertState, labels};

fn receivers() -> Vec<String> {
    ["default", "pager", "chat", "db"]
        .map(String::from)
        .to_vec()
}

fn route(receiver: Option<&str>, matchers: &[&str]) -> RouteConfig {
    RouteConfig {
        receiver: receiver.map(String::from),
        matchers: matchers.iter().map(|m| (*m).to_owned()).collect(),
        ..RouteConfig::default()
    }
}

fn root(children: Vec<RouteConfig>) -> RouteConfig {
    RouteConfig {
        receiver: Some("default".into()),
        group_by: Some(vec!["alertname".into()]),
        routes: children,
        ..RouteConfig::default()
    }
}

fn keys<'a>(routes: &[&'a Route]) -> Vec<&'a str> {
    routes.iter().map(|route| route.key()).collect()
}

fn receivers_of(routes: &[&Route]) -> Vec<String> {
    routes
        .iter()
        .map(|route| route.receiver().to_owned())
        .collect()
}

// ---- the tree -------------------------------------------------------------

#[test]
fn the_first_matching_child_takes_the_alert() {
    let config = root(vec![
        route(Some("pager"), &[r#"severity="critical""#]),
        route(Some("chat"), &[r#"severity=~"critical|warning""#]),
    ]);
    let tree = Route::compile(&config, &receivers()).unwrap();
    let critical = labels(&[("alertname", "A"), ("severity", "critical")]);
    assert_eq!(receivers_of(&tree.match_alert(&critical)), ["pager"]);
    let warning = labels(&[("alertname", "A"), ("severity", "warning")]);
    assert_eq!(receivers_of(&tree.match_alert(&warning)), ["chat"]);
    // No child matches: the root itself.
    let info = labels(&[("alertname", "A"), ("severity", "info")]);
    let matched = tree.match_alert(&info);
    assert_eq!(receivers_of(&matched), ["default"]);
    assert_eq!(keys(&matched), ["{}"]);
}

#[test]
fn continue_lets_later_siblings_match_too() {
    let mut first = route(Some("pager"), &[r#"severity="critical""#]);
    first.continue_matching = true;
    let config = root(vec![
        first,
        route(Some("chat"), &[r#"tool="files""#]),
        // Never reached for files alerts: the one before has no continue.
        route(Some("db"), &[r#"tool=~".+""#]),
    ]);
    let tree = Route::compile(&config, &receivers()).unwrap();
    let both = labels(&[("severity", "critical"), ("tool", "files")]);
    assert_eq!(receivers_of(&tree.match_alert(&both)), ["pager", "chat"]);
    let critical_shell = labels(&[("severity", "critical"), ("tool", "shell")]);
    assert_eq!(
        receivers_of(&tree.match_alert(&critical_shell)),
        ["pager", "db"]
    );
    // A continue route that does not match does not count.
    let files = labels(&[("severity", "warning"), ("tool", "files")]);
    assert_eq!(receivers_of(&tree.match_alert(&files)), ["chat"]);
}

#[test]
fn the_search_goes_depth_first_and_a_node_matches_when_no_child_does() {
    let mut team = route(Some("chat"), &[r#"team="infra""#]);
    team.routes = vec![
        route(Some("pager"), &[r#"severity="critical""#]),
        route(Some("db"), &[r#"tool="db""#]),
    ];
    let config = root(vec![team, route(Some("db"), &[r#"team=~"inf.*""#])]);
    let tree = Route::compile(&config, &receivers()).unwrap();
    let matched = tree.match_alert(&labels(&[("team", "infra"), ("severity", "critical")]));
    assert_eq!(
        keys(&matched),
        [r#"{}/{team="infra"}/{severity="critical"}"#]
    );
    // The team route matches but none of its children: the team route
    // itself, and the search stops there (no continue).
    let matched = tree.match_alert(&labels(&[("team", "infra")]));
    assert_eq!(keys(&matched), [r#"{}/{team="infra"}"#]);
    assert_eq!(receivers_of(&matched), ["chat"]);
}

#[test]
fn regex_and_negation_matchers_are_anchored_and_see_missing_labels_as_empty() {
    let config = root(vec![
        route(
            Some("pager"),
            &[r#"tool=~"files|shell""#, r#"env!="staging""#],
        ),
        route(Some("chat"), &[r#"tool!~"fi.*""#]),
    ]);
    let tree = Route::compile(&config, &receivers()).unwrap();
    let files = labels(&[("tool", "files")]);
    assert_eq!(receivers_of(&tree.match_alert(&files)), ["pager"]);
    let staging = labels(&[("tool", "files"), ("env", "staging")]);
    // Fails the first (env), and tool!~"fi.*" fails too: the root.
    assert_eq!(receivers_of(&tree.match_alert(&staging)), ["default"]);
    // Anchored: "filesystem" is not "files".
    let filesystem = labels(&[("tool", "filesystem")]);
    assert_eq!(receivers_of(&tree.match_alert(&filesystem)), ["default"]);
    // No tool label: "" does not match fi.*, so the negation matches.
    assert_eq!(
        receivers_of(&tree.match_alert(&labels(&[("a", "b")]))),
        ["chat"]
    );
}

#[test]
fn children_inherit_what_they_leave_unset() {
    let mut pager = route(Some("pager"), &[r#"severity="critical""#]);
    pager.group_by = Some(vec!["alertname".into(), "tool".into()]);
    pager.group_wait = Some(Duration::from_secs(10));
    let mut nested = route(None, &[r#"tool="files""#]);
    nested.repeat_interval = Some(Duration::from_secs(3600));
    pager.routes = vec![nested];
    let mut all = route(None, &[r#"team="x""#]);
    all.group_by = Some(vec!["...".into()]);
    let mut config = root(vec![pager, all]);
    config.group_interval = Some(Duration::from_secs(60));
    let tree = Route::compile(&config, &receivers()).unwrap();

    let top = tree.opts();
    assert_eq!(top.receiver, "default");
    assert_eq!(top.group_wait, DEFAULT_GROUP_WAIT);
    assert_eq!(top.group_interval, Duration::from_secs(60));
    assert_eq!(top.repeat_interval, DEFAULT_REPEAT_INTERVAL);

    let nested = &tree.routes()[0].routes()[0];
    let opts = nested.opts();
    assert_eq!(opts.receiver, "pager");
    assert_eq!(
        opts.group_by,
        GroupBy::Labels(["alertname".to_owned(), "tool".to_owned()].into())
    );
    assert_eq!(opts.group_wait, Duration::from_secs(10));
    assert_eq!(opts.group_interval, Duration::from_secs(60));
    assert_eq!(opts.repeat_interval, Duration::from_secs(3600));

    let all = &tree.routes()[1];
    assert_eq!(all.receiver(), "default");
    assert_eq!(all.opts().group_by, GroupBy::All);
}

#[test]
fn defaults_at_the_root_are_alertmanagers() {
    let tree = Route::compile(&route(Some("default"), &[]), &receivers()).unwrap();
    assert_eq!(
        tree.opts(),
        &RouteOpts {
            receiver: "default".into(),
            group_by: GroupBy::Labels(BTreeSet::new()),
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(4 * 3600),
        }
    );
    // Without group_by, every alert of the route is in one group.
    assert!(tree.group_labels(&labels(&[("alertname", "A")])).is_empty());
    assert_eq!(tree.group_key(&LabelSet::new()), "{}:{}");
    // A zero group_wait is Alertmanager's "notify at once".
    let mut config = route(Some("default"), &[]);
    config.group_wait = Some(Duration::ZERO);
    assert_eq!(
        Route::compile(&config, &receivers())
            .unwrap()
            .opts()
            .group_wait,
        Duration::ZERO
    );
}

// ---- keys -----------------------------------------------------------------

#[test]
fn keys_are_alertmanagers_and_ids_tell_equal_siblings_apart() {
    let mut parent = route(
        Some("pager"),
        &[r#"tool=~"files|shell""#, r#"severity="critical""#],
    );
    parent.routes = vec![
        route(None, &[r#"env="prod""#]),
        route(None, &[r#"env="prod""#]),
    ];
    let config = root(vec![parent.clone(), parent]);
    let tree = Route::compile(&config, &receivers()).unwrap();
    assert_eq!(tree.key(), "{}");
    assert_eq!(tree.id(), "{}");
    let first = &tree.routes()[0];
    let second = &tree.routes()[1];
    // Matchers are sorted (by name, then value, then type), as
    // Alertmanager sorts them.
    assert_eq!(
        first.key(),
        r#"{}/{severity="critical",tool=~"files|shell"}"#
    );
    assert_eq!(first.key(), second.key());
    assert_eq!(
        first.id(),
        r#"{}/{severity="critical",tool=~"files|shell"}/0"#
    );
    assert_eq!(
        second.id(),
        r#"{}/{severity="critical",tool=~"files|shell"}/1"#
    );
    assert_eq!(
        first.routes()[1].key(),
        r#"{}/{severity="critical",tool=~"files|shell"}/{env="prod"}"#
    );
    // Every id in the tree is unique, even two levels down.
    let mut ids = Vec::new();
    tree.walk(&mut |route| ids.push(route.id().to_owned()));
    assert_eq!(ids.len(), 7);
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

#[test]
fn group_keys_are_route_key_and_group_labels() {
    let mut child = route(Some("pager"), &[r#"severity="critical""#]);
    child.group_by = Some(vec!["alertname".into(), "tool".into(), "missing".into()]);
    let tree = Route::compile(&root(vec![child]), &receivers()).unwrap();
    let alert = labels(&[
        ("alertname", "ToolFailing"),
        ("tool", "files"),
        ("severity", "critical"),
    ]);
    let matched = tree.match_alert(&alert);
    let group = matched[0].group_labels(&alert);
    // The missing label is left out.
    assert_eq!(
        group,
        labels(&[("alertname", "ToolFailing"), ("tool", "files")])
    );
    assert_eq!(
        matched[0].group_key(&group),
        r#"{}/{severity="critical"}:{alertname="ToolFailing", tool="files"}"#
    );
    // The same input always gives the same key (the nflog depends on it),
    // whatever order the matchers were written in.
    let mut again = route(Some("pager"), &[r#"severity="critical""#]);
    again.group_by = Some(vec!["tool".into(), "alertname".into()]);
    let tree_again = Route::compile(&root(vec![again]), &receivers()).unwrap();
    let matched_again = tree_again.match_alert(&alert);
    assert_eq!(
        matched_again[0].group_key(&matched_again[0].group_labels(&alert)),
        matched[0].group_key(&group)
    );
}

#[test]
fn label_values_are_quoted_as_go_does() {
    let set = labels(&[
        ("a", "quote\" back\\ nl\n tab\t bell\u{7} nul\u{0} é ✓"),
        ("b", "\u{85}\u{2028}"),
    ]);
    assert_eq!(
        label_set_string(&set),
        r#"{a="quote\" back\\ nl\n tab\t bell\a nul\x00 é ✓", b="\u0085\u2028"}"#
    );
    assert_eq!(label_set_string(&LabelSet::new()), "{}");
    // Matcher values in route keys use OpenMetrics escaping.
    let child = route(Some("pager"), &[r#"msg="a\"b\\c""#]);
    let tree = Route::compile(&root(vec![child]), &receivers()).unwrap();
    assert_eq!(tree.routes()[0].key(), r#"{}/{msg="a\"b\\c"}"#);
}

#[test]
fn group_by_all_takes_every_label() {
    let mut config = route(Some("default"), &[]);
    config.group_by = Some(vec!["...".into()]);
    let tree = Route::compile(&config, &receivers()).unwrap();
    let alert = labels(&[("alertname", "A"), ("tool", "files")]);
    assert_eq!(tree.group_labels(&alert), alert);
}

// ---- configuration errors -------------------------------------------------

fn compile_error(config: &RouteConfig) -> ConfigError {
    Route::compile(config, &receivers()).unwrap_err()
}

#[test]
fn errors_name_the_setting_and_say_what_to_do() {
    // The root needs a receiver.
    let err = compile_error(&RouteConfig::default());
    assert_eq!(err.setting, "route.receiver");
    assert!(err.message.contains("default, pager"), "{err}");
    let err = compile_error(&route(Some(""), &[]));
    assert_eq!(err.setting, "route.receiver");

    // An unknown receiver, deep down.
    let mut second = route(None, &[r#"a="b""#]);
    second.routes = vec![route(Some("nobody"), &[r#"c="d""#])];
    let err = compile_error(&root(vec![route(None, &[r#"x="y""#]), second]));
    assert_eq!(err.setting, "route.routes[1].routes[0].receiver");
    assert!(err.message.contains("\"nobody\" is not defined"), "{err}");
    assert!(
        err.message
            .contains("the receivers are: default, pager, chat, db"),
        "{err}"
    );
    // With no receivers at all, it says so.
    let err = Route::compile(&route(Some("default"), &[]), &[]).unwrap_err();
    assert!(err.message.contains("no receivers are configured"), "{err}");

    // The root has no matchers and no continue.
    let err = compile_error(&route(Some("default"), &[r#"a="b""#]));
    assert_eq!(err.setting, "route.matchers");
    let mut config = route(Some("default"), &[]);
    config.continue_matching = true;
    assert_eq!(compile_error(&config).setting, "route.continue");

    // A bad matcher.
    let err = compile_error(&root(vec![route(None, &[r#"a="b""#, r#"tool=~"(""#])]));
    assert_eq!(err.setting, "route.routes[0].matchers[1]");
    assert!(err.message.contains("invalid regular expression"), "{err}");

    // Zero or absurd timings.
    let mut child = route(None, &[r#"a="b""#]);
    child.group_interval = Some(Duration::ZERO);
    let err = compile_error(&root(vec![child]));
    assert_eq!(err.setting, "route.routes[0].group_interval");
    assert!(err.message.contains("greater than 0"), "{err}");
    let mut config = root(vec![]);
    config.repeat_interval = Some(Duration::ZERO);
    assert_eq!(compile_error(&config).setting, "route.repeat_interval");
    config.repeat_interval = Some(Duration::from_secs(u64::MAX / 2));
    assert_eq!(compile_error(&config).setting, "route.repeat_interval");
    // A year, Alertmanager users' "never repeat", is fine.
    config.repeat_interval = Some(Duration::from_secs(8760 * 3600));
    assert!(Route::compile(&config, &receivers()).is_ok());

    // group_by: "..." alone, label names, no repeats.
    let mut config = root(vec![]);
    config.group_by = Some(vec!["alertname".into(), "...".into()]);
    let err = compile_error(&config);
    assert_eq!(err.setting, "route.group_by");
    assert!(err.message.contains("only entry"), "{err}");
    let mut child = route(None, &[r#"a="b""#]);
    child.group_by = Some(vec!["alertname".into(), "tool.name".into()]);
    let err = compile_error(&root(vec![child]));
    assert_eq!(err.setting, "route.routes[0].group_by[1]");
    assert!(err.message.contains("not a label name"), "{err}");
    let mut config = root(vec![]);
    config.group_by = Some(vec!["a".into(), "a".into()]);
    assert_eq!(compile_error(&config).setting, "route.group_by[1]");
}

#[test]
fn absurdly_deep_trees_are_refused() {
    let mut config = route(None, &[r#"a="b""#]);
    for _ in 0..40 {
        let mut parent = route(None, &[r#"a="b""#]);
        parent.routes = vec![config];
        config = parent;
    }
    let err = compile_error(&root(vec![config]));
    assert!(err.message.contains("nested more than"), "{err}");
}

// ---- the configuration file -----------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    server: ServerConfig,
    log: LogConfig,
    auth: agentmesh_kit::config::AuthConfig,
    route: RouteConfig,
    inhibit_rules: Vec<InhibitRuleConfig>,
}

agentmesh_kit::service_config!(
    FileConfig,
    service = "routing-test",
    section = "routing_test"
);

fn load(toml: &str) -> Result<FileConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentmesh.toml");
    std::fs::write(&path, toml).unwrap();
    agentmesh_kit::config::load::<FileConfig>(
        Some(&path),
        &agentmesh_kit::config::Overrides::default(),
    )
}

const EXAMPLE: &str = r#"
[routing_test.route]
receiver = "default"
group_by = ["alertname"]
group_wait = "30s"
group_interval = "5m"
repeat_interval = "4h"

[[routing_test.route.routes]]
matchers = ['severity="critical"', 'tool=~"files|shell"']
receiver = "pager"
continue = true
group_by = ["alertname", "tool"]
group_wait = "10s"

[[routing_test.route.routes.routes]]
matchers = ['env="prod"']
repeat_interval = "1h"

[[routing_test.route.routes]]
matchers = ['team="db"']
receiver = "db"

[[routing_test.inhibit_rules]]
source_matchers = ['alertname="CircuitOpen"']
target_matchers = ['alertname="LlmProviderFailing"']
equal = ["provider"]
"#;

#[test]
fn the_toml_format_reads_and_round_trips() {
    let config = load(EXAMPLE).unwrap();
    let route = &config.route;
    assert_eq!(route.receiver.as_deref(), Some("default"));
    assert_eq!(route.group_wait, Some(Duration::from_secs(30)));
    assert_eq!(route.routes.len(), 2);
    let pager = &route.routes[0];
    assert!(pager.continue_matching);
    assert_eq!(
        pager.matchers,
        [r#"severity="critical""#, r#"tool=~"files|shell""#]
    );
    assert_eq!(pager.group_wait, Some(Duration::from_secs(10)));
    assert_eq!(pager.group_interval, None);
    assert_eq!(
        pager.routes[0].repeat_interval,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        config.inhibit_rules,
        [InhibitRuleConfig {
            source_matchers: vec![r#"alertname="CircuitOpen""#.into()],
            target_matchers: vec![r#"alertname="LlmProviderFailing""#.into()],
            equal: vec!["provider".into()],
        }]
    );
    let tree = Route::compile(route, &receivers()).unwrap();
    let nested = &tree.routes()[0].routes()[0];
    assert_eq!(nested.receiver(), "pager");
    assert_eq!(nested.opts().repeat_interval, Duration::from_secs(3600));
    assert_eq!(nested.opts().group_wait, Duration::from_secs(10));
    Inhibitor::compile(&config.inhibit_rules).unwrap();

    // --dump-config output reads back the same.
    // A file for this service alone has the settings at the top level.
    let dumped = agentmesh_kit::config::to_toml(&config);
    assert_eq!(load(&dumped).unwrap(), config, "{dumped}");
}

#[test]
fn unknown_route_settings_are_refused() {
    let err =
        load("[routing_test.route]\nreceiver = \"default\"\nmatch = { a = \"b\" }\n").unwrap_err();
    assert!(err.message.contains("match"), "{err}");
    assert!(err.setting.starts_with("routing_test.route"), "{err}");
}

// ---- inhibition -----------------------------------------------------------

fn alert(pairs: &[(&str, &str)], state: AlertState) -> Alert {
    Alert::new(labels(pairs), state, SystemTime::UNIX_EPOCH)
}

fn rule(source: &[&str], target: &[&str], equal: &[&str]) -> InhibitRuleConfig {
    InhibitRuleConfig {
        source_matchers: source.iter().map(|m| (*m).to_owned()).collect(),
        target_matchers: target.iter().map(|m| (*m).to_owned()).collect(),
        equal: equal.iter().map(|m| (*m).to_owned()).collect(),
    }
}

#[test]
fn a_firing_source_with_equal_labels_inhibits_the_target() {
    let inhibitor = Inhibitor::compile(&[rule(
        &[r#"alertname="CircuitOpen""#],
        &[r#"alertname="LlmProviderFailing""#],
        &["provider"],
    )])
    .unwrap();
    let open_a = alert(
        &[("alertname", "CircuitOpen"), ("provider", "a")],
        AlertState::Firing,
    );
    let open_b = alert(
        &[("alertname", "CircuitOpen"), ("provider", "b")],
        AlertState::Firing,
    );
    let failing_a = alert(
        &[("alertname", "LlmProviderFailing"), ("provider", "a")],
        AlertState::Firing,
    );
    let failing_c = alert(
        &[("alertname", "LlmProviderFailing"), ("provider", "c")],
        AlertState::Firing,
    );
    let all = [
        open_a.clone(),
        open_b.clone(),
        failing_a.clone(),
        failing_c.clone(),
    ];
    assert_eq!(
        inhibitor.inhibited_by(&failing_a, &all),
        [open_a.fingerprint]
    );
    // Different provider: not inhibited.
    assert!(inhibitor.inhibited_by(&failing_c, &all).is_empty());
    // Sources are not targets.
    assert!(inhibitor.inhibited_by(&open_a, &all).is_empty());
    // The index answers the same.
    let index = inhibitor.index(&all);
    for target in &all {
        assert_eq!(
            index.inhibited_by(target),
            inhibitor.inhibited_by(target, &all)
        );
    }
}

#[test]
fn a_label_missing_on_both_sides_counts_as_equal() {
    let inhibitor = Inhibitor::compile(&[rule(
        &[r#"severity="critical""#],
        &[r#"severity="warning""#],
        &["tool"],
    )])
    .unwrap();
    let source = alert(
        &[("alertname", "A"), ("severity", "critical")],
        AlertState::Firing,
    );
    let target = alert(
        &[("alertname", "B"), ("severity", "warning")],
        AlertState::Firing,
    );
    let with_tool = alert(
        &[("alertname", "C"), ("severity", "warning"), ("tool", "x")],
        AlertState::Firing,
    );
    let all = [source.clone(), target.clone(), with_tool.clone()];
    assert_eq!(inhibitor.inhibited_by(&target, &all), [source.fingerprint]);
    assert!(inhibitor.inhibited_by(&with_tool, &all).is_empty());
}

#[test]
fn resolved_and_pending_sources_do_not_inhibit() {
    let inhibitor =
        Inhibitor::compile(&[rule(&[r#"alertname="Up""#], &[r#"alertname="Down""#], &[])]).unwrap();
    let target = alert(&[("alertname", "Down")], AlertState::Firing);
    let resolved = alert(&[("alertname", "Up"), ("i", "1")], AlertState::Resolved);
    let pending = alert(&[("alertname", "Up"), ("i", "2")], AlertState::Pending);
    assert!(
        inhibitor
            .inhibited_by(&target, &[resolved, pending])
            .is_empty()
    );
    let firing = alert(&[("alertname", "Up"), ("i", "3")], AlertState::Firing);
    // Muted sources still inhibit, as in Alertmanager.
    let mut silenced = alert(&[("alertname", "Up"), ("i", "4")], AlertState::Firing);
    silenced.silenced_by = vec!["s1".into()];
    let mut expected = vec![firing.fingerprint, silenced.fingerprint];
    expected.sort();
    assert_eq!(
        inhibitor.inhibited_by(&target, &[firing, silenced]),
        expected
    );
}

#[test]
fn an_alert_matching_both_sides_does_not_inhibit_itself_or_its_kind() {
    // Every critical alert inhibits the other alerts of its tool.
    let inhibitor = Inhibitor::compile(&[rule(
        &[r#"severity="critical""#],
        &[r#"tool=~".+""#],
        &["tool"],
    )])
    .unwrap();
    let critical = alert(
        &[
            ("alertname", "A"),
            ("severity", "critical"),
            ("tool", "files"),
        ],
        AlertState::Firing,
    );
    let other_critical = alert(
        &[
            ("alertname", "B"),
            ("severity", "critical"),
            ("tool", "files"),
        ],
        AlertState::Firing,
    );
    let warning = alert(
        &[
            ("alertname", "C"),
            ("severity", "warning"),
            ("tool", "files"),
        ],
        AlertState::Firing,
    );
    let all = [critical.clone(), other_critical.clone(), warning.clone()];
    // Both critical alerts match both sides: neither mutes itself nor the
    // other (Alertmanager's two-sided exclusion).
    assert!(inhibitor.inhibited_by(&critical, &all).is_empty());
    assert!(inhibitor.inhibited_by(&other_critical, &all).is_empty());
    let mut expected = vec![critical.fingerprint, other_critical.fingerprint];
    expected.sort();
    assert_eq!(inhibitor.inhibited_by(&warning, &all), expected);
}

#[test]
fn several_rules_add_up_without_repeats() {
    let inhibitor = Inhibitor::compile(&[
        rule(&[r#"alertname="Outage""#], &[r#"severity="warning""#], &[]),
        rule(&[r#"alertname="Outage""#], &[r#"tool="files""#], &[]),
    ])
    .unwrap();
    assert!(!inhibitor.is_empty());
    let outage = alert(&[("alertname", "Outage")], AlertState::Firing);
    let target = alert(
        &[
            ("alertname", "X"),
            ("severity", "warning"),
            ("tool", "files"),
        ],
        AlertState::Firing,
    );
    assert_eq!(
        inhibitor.inhibited_by(&target, &[outage.clone(), target.clone()]),
        [outage.fingerprint]
    );
    assert!(
        Inhibitor::default()
            .inhibited_by(&target, &[outage])
            .is_empty()
    );
}

#[test]
fn inhibition_rule_errors_name_the_setting() {
    let err = Inhibitor::compile(&[
        rule(&[r#"a="b""#], &[r#"c="d""#], &[]),
        rule(&[r#"a="b""#, r#"x=~"[""#], &[r#"c="d""#], &[]),
    ])
    .unwrap_err();
    assert_eq!(err.setting, "inhibit_rules[1].source_matchers[1]");
    assert!(err.message.contains("invalid regular expression"), "{err}");
    let err = Inhibitor::compile(&[rule(&[r#"a="b""#], &["c"], &[])]).unwrap_err();
    assert_eq!(err.setting, "inhibit_rules[0].target_matchers[0]");
    let err = Inhibitor::compile(&[rule(&[], &[r#"c="d""#], &[])]).unwrap_err();
    assert_eq!(err.setting, "inhibit_rules[0].source_matchers");
    let err = Inhibitor::compile(&[rule(&[r#"a="b""#], &[], &[])]).unwrap_err();
    assert_eq!(err.setting, "inhibit_rules[0].target_matchers");
    let err =
        Inhibitor::compile(&[rule(&[r#"a="b""#], &[r#"c="d""#], &["ok", "not-ok"])]).unwrap_err();
    assert_eq!(err.setting, "inhibit_rules[0].equal[1]");
    assert!(err.message.contains("not a label name"), "{err}");
}
