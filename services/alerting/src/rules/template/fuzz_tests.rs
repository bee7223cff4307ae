//! Fuzz targets of the annotation template language: arbitrary text parses
//! or is refused (an unclosed or empty `{{`) without panicking, and the
//! rendered text is exactly the template's text with each placeholder
//! replaced, so its size is bounded by the template and the values.

use agentmesh_testkit::fuzz::check;
use proptest::prelude::*;

use super::{Name, Template, Var};

/// Resolves every name: labels as labels, anything else as a field.
fn resolve(name: Name<'_>) -> Result<Var, String> {
    Ok(match name {
        Name::Plain(plain) => Var::Field(plain.to_owned()),
        Name::Label(label) => Var::Label(label.to_owned()),
    })
}

fn source() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "{{", "}}", "{", "}", " ", "$value", "$labels.", "tool", "count", "é", "🙂", "\n",
        ])
        .prop_map(str::to_owned),
        ".{0,6}",
    ];
    prop_oneof![
        any::<String>(),
        prop::collection::vec(piece, 0..30).prop_map(|pieces| pieces.concat()),
    ]
}

#[test]
fn fuzz_alert_template_arbitrary_text() {
    check("alert_template_arbitrary_text", source(), |source| {
        let template = match Template::parse(&source, resolve) {
            Ok(template) => template,
            Err(err) => {
                prop_assert!(source.contains("{{"), "{source:?}: {err}");
                prop_assert!(err.len() <= source.len() * 6 + 200);
                return Ok(());
            }
        };
        prop_assert_eq!(template.source(), source.as_str());
        // With every value empty, what is left is the text outside the
        // placeholders: never longer than the source.
        let bare = template.render(|_, _| {});
        prop_assert!(bare.len() <= source.len());
        // Each placeholder adds exactly its value.
        let vars = template.vars().count();
        let filled = template.render(|_, out| out.push_str("<v>"));
        prop_assert_eq!(filled.len(), bare.len() + 3 * vars);
        prop_assert!(vars <= source.len() / 5);
        if !source.contains("{{") {
            prop_assert_eq!(bare, source);
        }
        Ok(())
    });
}
