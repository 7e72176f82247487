//! metav1.Condition bookkeeping shared by both kinds.
//!
//! `lastTransitionTime` only moves when a condition's status changes, as the Kubernetes API
//! conventions require; reason and message follow the latest observation.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The three statuses a condition may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }

    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// A desired condition, before it is merged with what the status already says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(
        type_: &'static str,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: bounded(message.into(), MESSAGE_MAX),
        }
    }
}

/// The longest condition message Bulkhead writes, in bytes (the schema allows metav1's 32768
/// for other writers): text quoted from elsewhere (a control plane's problem) is cut here.
pub const MESSAGE_MAX: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Helpers on a list of conditions.
pub trait ConditionSet {
    /// The condition of this type, if any.
    fn find(&self, type_: &str) -> Option<&Condition>;
    /// Whether the condition of this type has status `True`.
    fn is_true(&self, type_: &str) -> bool {
        self.find(type_).is_some_and(|c| c.status == "True")
    }
}

impl ConditionSet for [Condition] {
    fn find(&self, type_: &str) -> Option<&Condition> {
        self.iter().find(|c| c.type_ == type_)
    }
}

impl ConditionSet for Vec<Condition> {
    fn find(&self, type_: &str) -> Option<&Condition> {
        self.as_slice().find(type_)
    }
}

/// A condition whose status changed, for Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub type_: &'static str,
    pub from: Option<String>,
    pub to: ConditionStatus,
    pub reason: String,
    pub message: String,
}

/// Merge desired conditions into the existing ones.
///
/// Returns the new list (existing conditions of other types are kept, so conditions owned by a
/// later feature are not dropped) and the transitions, i.e. the conditions whose status changed.
pub fn merge(
    existing: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: Timestamp,
) -> (Vec<Condition>, Vec<Transition>) {
    let mut out: Vec<Condition> = existing.to_vec();
    let mut transitions = Vec::new();
    for want in desired {
        let status = want.status.as_str();
        match out.iter_mut().find(|c| c.type_ == want.type_) {
            Some(current) => {
                if current.status != status {
                    transitions.push(Transition {
                        type_: want.type_,
                        from: Some(current.status.clone()),
                        to: want.status,
                        reason: want.reason.clone(),
                        message: want.message.clone(),
                    });
                    current.last_transition_time = Time(now);
                    current.status = status.to_owned();
                }
                current.reason.clone_from(&want.reason);
                current.message.clone_from(&want.message);
                current.observed_generation = generation;
            }
            None => {
                transitions.push(Transition {
                    type_: want.type_,
                    from: None,
                    to: want.status,
                    reason: want.reason.clone(),
                    message: want.message.clone(),
                });
                out.push(Condition {
                    type_: want.type_.to_owned(),
                    status: status.to_owned(),
                    reason: want.reason.clone(),
                    message: want.message.clone(),
                    last_transition_time: Time(now),
                    observed_generation: generation,
                });
            }
        }
    }
    (out, transitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn new_condition_is_a_transition_with_the_current_time() {
        let desired = [DesiredCondition::new(
            "Ready",
            ConditionStatus::True,
            "Ok",
            "fine",
        )];
        let (conds, transitions) = merge(&[], &desired, Some(3), at(100));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].status, "True");
        assert_eq!(conds[0].observed_generation, Some(3));
        assert_eq!(conds[0].last_transition_time, Time(at(100)));
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].from, None);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MESSAGE_MAX);
        let cut = DesiredCondition::new("Ready", ConditionStatus::False, "R", long).message;
        assert!(
            cut.len() <= MESSAGE_MAX && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert_eq!(bounded("short".into(), 10), "short");
        assert_eq!(bounded("0123456789abc".into(), 10), "0123456…");
    }

    #[test]
    fn same_status_keeps_transition_time_but_updates_message() {
        let first = [DesiredCondition::new(
            "Ready",
            ConditionStatus::False,
            "A",
            "one",
        )];
        let (conds, _) = merge(&[], &first, Some(1), at(100));
        let second = [DesiredCondition::new(
            "Ready",
            ConditionStatus::False,
            "B",
            "two",
        )];
        let (conds, transitions) = merge(&conds, &second, Some(2), at(200));
        assert!(transitions.is_empty());
        assert_eq!(conds[0].last_transition_time, Time(at(100)));
        assert_eq!(conds[0].reason, "B");
        assert_eq!(conds[0].message, "two");
        assert_eq!(conds[0].observed_generation, Some(2));
    }

    #[test]
    fn status_change_moves_transition_time_and_reports_it() {
        let first = [DesiredCondition::new(
            "Ready",
            ConditionStatus::False,
            "A",
            "one",
        )];
        let (conds, _) = merge(&[], &first, Some(1), at(100));
        let second = [DesiredCondition::new(
            "Ready",
            ConditionStatus::True,
            "Ok",
            "ok",
        )];
        let (conds, transitions) = merge(&conds, &second, Some(1), at(300));
        assert_eq!(conds[0].last_transition_time, Time(at(300)));
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].from.as_deref(), Some("False"));
        assert_eq!(transitions[0].to, ConditionStatus::True);
    }

    #[test]
    fn conditions_of_other_types_are_kept() {
        let first = [DesiredCondition::new(
            "Other",
            ConditionStatus::True,
            "A",
            "a",
        )];
        let (conds, _) = merge(&[], &first, None, at(1));
        let second = [DesiredCondition::new(
            "Ready",
            ConditionStatus::True,
            "B",
            "b",
        )];
        let (conds, _) = merge(&conds, &second, None, at(2));
        assert!(conds.is_true("Other"));
        assert!(conds.is_true("Ready"));
    }
}
