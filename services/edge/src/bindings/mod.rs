//! The HTTP bindings of the services the edge maps (`SERVICES`), read from the contract
//! itself: each RPC's `google.api.http` option (in the descriptors the
//! proto crate embeds) is a route, so the edge (`crate::transcode`), Envoy's
//! transcoder, grpc-gateway and the OpenAPI document (`crate::openapi`) all
//! serve the same paths. A rule the edge cannot serve is an error at start.

mod template;

use http::Method;
use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

pub(crate) use template::Template;

/// The services of the contract whose REST mapping the edge serves.
pub(crate) const ORCHESTRATOR: &str = "agentmesh.orchestrator.v1.OrchestratorService";
pub(crate) const AUDIT: &str = "agentmesh.audit.v1.AuditService";
pub(crate) const ALERTING: &str = "agentmesh.alerting.v1.AlertingService";
pub(crate) const SERVICES: [&str; 3] = [ORCHESTRATOR, AUDIT, ALERTING];

/// Which request fields the body carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyRule {
    /// None: every field comes from the path and the query string.
    Empty,
    /// `*`: every field the path does not set.
    Whole,
}

/// One HTTP binding of an RPC.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    pub(crate) method: MethodDescriptor,
    pub(crate) verb: Method,
    pub(crate) template: Template,
    pub(crate) body: BodyRule,
}

/// Every binding of the mapped service.
#[derive(Debug)]
pub(crate) struct Transcoder {
    bindings: Vec<Binding>,
}

/// How a request matched.
#[derive(Debug)]
pub(crate) enum Found<'a> {
    Route(&'a Binding, Vec<(String, String)>),
    /// The path exists with other verbs.
    OtherVerbs(Vec<Method>),
    Nothing,
}

impl Transcoder {
    /// The bindings of the contract from the built-in descriptors.
    #[cfg(test)]
    pub(crate) fn for_contract() -> Result<Self, String> {
        let pool = DescriptorPool::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
            .map_err(|err| err.to_string())?;
        Self::of_services(&pool)
    }

    /// The bindings of every service of `SERVICES` in `pool`, in order.
    pub(crate) fn of_services(pool: &DescriptorPool) -> Result<Self, String> {
        let mut bindings = Vec::new();
        for service in SERVICES {
            bindings.extend(Self::of_service(pool, service)?.bindings);
        }
        Ok(Self { bindings })
    }

    /// The bindings of `service` in `pool`: one per RPC with a
    /// `google.api.http` option (additional bindings are not used by the
    /// contract, and refused, as are templates the edge cannot serve).
    pub(crate) fn of_service(pool: &DescriptorPool, service: &str) -> Result<Self, String> {
        let service = pool
            .get_service_by_name(service)
            .ok_or_else(|| format!("{service} is not in the descriptors"))?;
        let extension = pool
            .get_extension_by_name("google.api.http")
            .ok_or("google.api.http is not in the descriptors")?;
        let mut bindings = Vec::new();
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&extension) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
                return Err(format!(
                    "{}: google.api.http is not a rule",
                    method.full_name()
                ));
            };
            bindings.push(binding(method, &rule)?);
        }
        Ok(Self { bindings })
    }

    /// Every binding, in the contract's order.
    pub(crate) fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The binding of `verb` at `path`, and the path's variables.
    pub(crate) fn find(&self, verb: &Method, path: &str) -> Found<'_> {
        let mut others = Vec::new();
        for binding in &self.bindings {
            if let Some(values) = binding.template.matches(path) {
                if binding.verb == *verb {
                    return Found::Route(binding, values);
                }
                others.push(binding.verb.clone());
            }
        }
        if others.is_empty() {
            Found::Nothing
        } else {
            Found::OtherVerbs(others)
        }
    }
}

/// A binding from an `HttpRule` message.
fn binding(
    method: MethodDescriptor,
    rule: &prost_reflect::DynamicMessage,
) -> Result<Binding, String> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        _ => None,
    };
    let name = method.full_name().to_owned();
    let (verb, path) = [
        (Method::GET, "get"),
        (Method::POST, "post"),
        (Method::PUT, "put"),
        (Method::DELETE, "delete"),
        (Method::PATCH, "patch"),
    ]
    .into_iter()
    .find_map(|(verb, field)| text(field).map(|path| (verb, path)))
    .ok_or_else(|| format!("{name}: its HTTP rule has no get, post, put, delete or patch"))?;
    if rule
        .get_field_by_name("additional_bindings")
        .is_some_and(|value| matches!(value.as_ref(), Value::List(list) if !list.is_empty()))
    {
        return Err(format!("{name}: additional_bindings are not served"));
    }
    let body = match text("body").as_deref() {
        None => BodyRule::Empty,
        Some("*") => BodyRule::Whole,
        Some(other) => return Err(format!("{name}: body `{other}` is not served (only `*`)")),
    };
    let template = Template::parse(&path).map_err(|err| format!("{name}: {err}"))?;
    for variable in template.variables() {
        if method.input().get_field_by_name(variable).is_none() {
            return Err(format!(
                "{name}: the path variable `{variable}` is not a field of {}",
                method.input().name()
            ));
        }
    }
    Ok(Binding {
        method,
        verb,
        template,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcoder() -> Transcoder {
        match Transcoder::for_contract() {
            Ok(transcoder) => transcoder,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn the_contract_maps_the_orchestrator_and_the_consoles_rpcs() {
        let transcoder = transcoder();
        let routes: Vec<String> = transcoder
            .bindings()
            .iter()
            .map(|binding| format!("{} {}", binding.verb, binding.template.text()))
            .collect();
        for expected in [
            "POST /v1/runs",
            "GET /v1/runs/{run_id}",
            "GET /v1/runs",
            "POST /v1/runs/{run_id}:cancel",
            "GET /v1/agents",
            "GET /v1/runs/{run_id}/events",
            "POST /v1/runs:stream",
            "GET /v1/agents/{name}",
            "GET /v1/audit/events",
            "GET /v1/audit/report",
            "GET /v1/audit:verifyChain",
            "GET /v1/alerts",
            "POST /v1/silences",
            "GET /v1/silences",
            "DELETE /v1/silences/{id}",
            "GET /v1/rules",
        ] {
            assert!(
                routes.iter().any(|route| route == expected),
                "{expected} in {routes:?}"
            );
        }
        assert_eq!(routes.len(), 16);
    }

    #[test]
    fn requests_find_their_binding_or_say_why_not() {
        let transcoder = transcoder();
        match transcoder.find(&Method::POST, "/v1/runs/r1:cancel") {
            Found::Route(binding, values) => {
                assert_eq!(binding.method.name(), "CancelRun");
                assert_eq!(values, vec![("run_id".to_owned(), "r1".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            transcoder.find(&Method::DELETE, "/v1/runs"),
            Found::OtherVerbs(verbs) if verbs.contains(&Method::GET) && verbs.contains(&Method::POST)
        ));
        assert!(matches!(
            transcoder.find(&Method::GET, "/v2/runs"),
            Found::Nothing
        ));
    }
}
