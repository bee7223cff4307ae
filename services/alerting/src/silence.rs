//! Silences: while active, alerts matching all of a silence's matchers are
//! not notified (they stay listed, marked silenced). As in Alertmanager, a
//! silence's state follows from its times, and expiring one sets its end to
//! now rather than deleting it.

use std::time::SystemTime;

use agentmesh_kit::status::Violations;
use agentmesh_proto::alerting::v1 as pb;

use crate::matcher::Matcher;
use crate::model::LabelSet;

/// A silence as the service keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Silence {
    pub(crate) id: String,
    pub(crate) matchers: Vec<Matcher>,
    pub(crate) starts_at: SystemTime,
    pub(crate) ends_at: SystemTime,
    pub(crate) created_by: String,
    pub(crate) comment: String,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
}

impl Silence {
    /// Pending before its start, active until its end, then expired.
    pub(crate) fn state(&self, now: SystemTime) -> pb::SilenceState {
        if now < self.starts_at {
            pb::SilenceState::Pending
        } else if now < self.ends_at {
            pb::SilenceState::Active
        } else {
            pb::SilenceState::Expired
        }
    }

    /// True when active at `now` and every matcher matches `labels`.
    pub(crate) fn silences(&self, labels: &LabelSet, now: SystemTime) -> bool {
        self.state(now) == pb::SilenceState::Active
            && self.matchers.iter().all(|matcher| matcher.matches(labels))
    }

    /// The API form at `now`.
    pub(crate) fn to_proto(&self, now: SystemTime) -> pb::Silence {
        pb::Silence {
            id: self.id.clone(),
            matchers: self.matchers.iter().map(Matcher::to_proto).collect(),
            starts_at: Some(self.starts_at.into()),
            ends_at: Some(self.ends_at.into()),
            created_by: self.created_by.clone(),
            comment: self.comment.clone(),
            state: self.state(now) as i32,
            updated_at: Some(self.updated_at.into()),
        }
    }

    /// Checks a silence given to CreateSilence and builds it, with a new id;
    /// every problem found is returned as (field, description).
    pub(crate) fn create(
        request: Option<&pb::Silence>,
        now: SystemTime,
    ) -> Result<Self, Violations> {
        let Some(silence) = request else {
            return Err([("silence", "is required")].into_iter().collect());
        };
        let mut problems = Violations::new();
        let mut problem = |field: &str, what: &str| {
            problems.push((format!("silence.{field}"), what.to_owned()));
        };
        if !silence.id.is_empty() {
            problem("id", "must be empty: the server assigns it");
        }
        let matchers = checked_matchers(&silence.matchers, &mut problem);
        let starts_at = match &silence.starts_at {
            None => Some(now),
            Some(ts) => match SystemTime::try_from(*ts) {
                Ok(time) => Some(time),
                Err(_) => {
                    problem("starts_at", "is not a valid time");
                    None
                }
            },
        };
        let ends_at = match &silence.ends_at {
            None => {
                problem("ends_at", "is required");
                None
            }
            Some(ts) => match SystemTime::try_from(*ts) {
                Ok(time) => Some(time),
                Err(_) => {
                    problem("ends_at", "is not a valid time");
                    None
                }
            },
        };
        if let (Some(starts_at), Some(ends_at)) = (starts_at, ends_at) {
            if ends_at <= starts_at {
                problem("ends_at", "must be after starts_at");
            } else if ends_at <= now {
                problem("ends_at", "is in the past");
            }
        }
        if silence.created_by.trim().is_empty() {
            problem(
                "created_by",
                "is required (who creates the silence, e.g. an email address)",
            );
        }
        if silence.comment.trim().is_empty() {
            problem("comment", "is required (why, e.g. a ticket link)");
        }
        match (problems.is_empty(), starts_at, ends_at) {
            (true, Some(starts_at), Some(ends_at)) => Ok(Self {
                id: uuid::Uuid::now_v7().to_string(),
                matchers,
                starts_at,
                ends_at,
                created_by: silence.created_by.clone(),
                comment: silence.comment.clone(),
                created_at: now,
                updated_at: now,
            }),
            _ => Err(problems),
        }
    }

    /// Ends the silence now (a pending one ends before it starts: it never
    /// silences anything). An expired silence is left as it is.
    pub(crate) fn expire(&mut self, now: SystemTime) -> bool {
        if self.state(now) == pb::SilenceState::Expired {
            return false;
        }
        if self.starts_at > now {
            self.starts_at = now;
        }
        self.ends_at = now;
        self.updated_at = now;
        true
    }
}

/// The matchers of a new silence; reports (to `problem`) a missing list,
/// matchers that do not parse, and a list that would match every alert.
fn checked_matchers(given: &[pb::Matcher], problem: &mut impl FnMut(&str, &str)) -> Vec<Matcher> {
    let mut matchers = Vec::new();
    if given.is_empty() {
        problem("matchers", "at least one matcher is required");
    }
    for (index, matcher) in given.iter().enumerate() {
        match Matcher::from_proto(matcher) {
            Ok(matcher) => matchers.push(matcher),
            Err(err) => problem(&format!("matchers[{index}]"), &err.0),
        }
    }
    if !matchers.is_empty() && matchers.iter().all(|matcher| matcher.matches_value("")) {
        problem(
            "matchers",
            "every matcher matches the empty string, so the silence would match every alert; \
             add one that needs a label, e.g. alertname=\"…\"",
        );
    }
    matchers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn request(matchers: &[(&str, &str)], ends_in: Duration) -> pb::Silence {
        let now = SystemTime::now();
        pb::Silence {
            matchers: matchers
                .iter()
                .map(|(name, value)| Matcher::equal(*name, *value).to_proto())
                .collect(),
            ends_at: Some((now + ends_in).into()),
            created_by: "ops@example.com".into(),
            comment: "maintenance".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_silence_silences_matching_alerts_while_active() {
        let now = SystemTime::now();
        let silence = Silence::create(
            Some(&request(
                &[("alertname", "ToolFailing")],
                Duration::from_secs(3600),
            )),
            now,
        )
        .unwrap();
        let labels: LabelSet = [("alertname".to_owned(), "ToolFailing".to_owned())].into();
        assert!(silence.silences(&labels, now));
        assert!(!silence.silences(&LabelSet::new(), now));
        assert!(!silence.silences(&labels, now + Duration::from_secs(3601)));
        assert_eq!(silence.state(now), pb::SilenceState::Active);
    }

    #[test]
    fn problems_name_the_field() {
        let now = SystemTime::now();
        let mut bad = request(&[("alertname", "")], Duration::from_secs(60));
        bad.id = "x".into();
        bad.created_by.clear();
        bad.comment.clear();
        bad.starts_at = Some((now + Duration::from_secs(120)).into());
        let fields: Vec<String> = Silence::create(Some(&bad), now)
            .unwrap_err()
            .kept()
            .iter()
            .map(|(field, _)| field.clone())
            .collect();
        assert_eq!(
            fields,
            [
                "silence.id",
                "silence.matchers",
                "silence.ends_at",
                "silence.created_by",
                "silence.comment"
            ]
        );
        let mut no_end = request(&[("a", "b")], Duration::from_secs(60));
        no_end.ends_at = None;
        assert_eq!(
            Silence::create(Some(&no_end), now).unwrap_err().kept()[0].0,
            "silence.ends_at"
        );
        assert_eq!(
            Silence::create(None, now).unwrap_err().kept()[0].0,
            "silence"
        );
    }

    #[test]
    fn expiring_ends_it_now_and_twice_changes_nothing() {
        let now = SystemTime::now();
        let mut silence =
            Silence::create(Some(&request(&[("a", "b")], Duration::from_secs(60))), now).unwrap();
        let later = now + Duration::from_secs(1);
        assert!(silence.expire(later));
        assert_eq!(silence.state(later), pb::SilenceState::Expired);
        assert!(!silence.expire(later + Duration::from_secs(1)));
        assert_eq!(silence.ends_at, later);
    }
}
