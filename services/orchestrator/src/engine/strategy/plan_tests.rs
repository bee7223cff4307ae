use super::*;

fn plan_of(answer: &str) -> Result<Vec<pb::PlanStep>, String> {
    parse_steps(answer, 8, &[])
}

const DIAMOND: &str = r#"{"steps": [
  {"id": "s1", "description": "a", "depends_on": [], "tools": [], "success_criteria": ""},
  {"id": "s2", "description": "b", "depends_on": ["s1"], "tools": ["calculator"], "success_criteria": "a number"},
  {"id": "s3", "description": "c", "depends_on": ["s1"], "tools": [], "success_criteria": ""},
  {"id": "s4", "description": "d", "depends_on": ["s2", "s3"], "tools": [], "success_criteria": ""}
]}"#;

#[test]
fn a_diamond_plan_parses_and_runs_its_middle_steps_together() {
    let steps = plan_of(&format!("Here is the plan:\n```json\n{DIAMOND}\n```")).unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[1].tools, ["calculator"]);
    let mut plan = pb::Plan {
        steps,
        revision: 1,
        replans: 0,
    };
    assert_eq!(ready(&plan, 3), ["s1"]);
    step_mut(&mut plan, "s1")
        .unwrap()
        .set_state(PlanStepState::Succeeded);
    assert_eq!(ready(&plan, 3), ["s2", "s3"]);
    assert_eq!(ready(&plan, 1), ["s2"]);
    step_mut(&mut plan, "s2")
        .unwrap()
        .set_state(PlanStepState::Running);
    step_mut(&mut plan, "s3")
        .unwrap()
        .set_state(PlanStepState::Skipped);
    assert!(ready(&plan, 3).is_empty());
    let plan = resumed(plan);
    assert_eq!(ready(&plan, 3), ["s2"]);
    assert!(!finished(&plan));
}

#[test]
fn bad_plans_are_refused_with_what_to_fix() {
    let cases = [
        ("not json", "not a JSON object"),
        (r#"{"steps": "no"}"#, "does not match its schema at /steps"),
        (r#"{"steps": []}"#, "no step left"),
        (
            r#"{"steps": [{"id": "a", "description": "x", "depends_on": ["b"], "tools": [], "success_criteria": ""}]}"#,
            "depends on \"b\", which is not a step",
        ),
        (
            r#"{"steps": [{"id": "a", "description": "x", "depends_on": ["a"], "tools": [], "success_criteria": ""}]}"#,
            "depends on itself",
        ),
        (
            r#"{"steps": [
              {"id": "a", "description": "x", "depends_on": ["b"], "tools": [], "success_criteria": ""},
              {"id": "b", "description": "y", "depends_on": ["a"], "tools": [], "success_criteria": ""}]}"#,
            "cycle",
        ),
        (
            r#"{"steps": [
              {"id": "a", "description": "x", "depends_on": [], "tools": [], "success_criteria": ""},
              {"id": "a", "description": "y", "depends_on": [], "tools": [], "success_criteria": ""}]}"#,
            "two steps have the id",
        ),
        (
            r#"{"steps": [{"id": "a b", "description": "x", "depends_on": [], "tools": [], "success_criteria": ""}]}"#,
            "must be 1-32 letters",
        ),
    ];
    for (answer, expected) in cases {
        let error = plan_of(answer).unwrap_err();
        assert!(error.contains(expected), "{answer}: {error}");
    }
    let error = parse_steps(DIAMOND, 3, &[]).unwrap_err();
    assert!(error.contains("at most 3"), "{error}");
}

#[test]
fn a_replan_keeps_finished_steps_and_may_depend_on_them() {
    let kept = vec![pb::PlanStep {
        id: "s1".into(),
        description: "done".into(),
        state: PlanStepState::Succeeded.into(),
        result: "42".into(),
        ..pb::PlanStep::default()
    }];
    let answer = r#"{"steps": [
      {"id": "s1", "description": "done again", "depends_on": [], "tools": [], "success_criteria": ""},
      {"id": "s5", "description": "use it", "depends_on": ["s1"], "tools": [], "success_criteria": ""}]}"#;
    let steps = parse_steps(answer, 8, &kept).unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].id, "s5");
    assert!(
        describe(&pb::Plan {
            steps: kept,
            ..pb::Plan::default()
        })
        .contains("s1 [SUCCEEDED]: done\n  result: 42")
    );
}
