//! The rules of a user record, without sockets or a database: which names and emails are accepted
//! (`422` with every offending field at once) and the form they are stored in (trimmed, the email
//! lowercased so that uniqueness ignores case).

use service_kit::{ApiError, FieldError};

use crate::model::{NewUser, UserPatch};

/// A new user's fields, all checked.
pub fn check_new(new: &NewUser) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    validate_name(&new.name, &mut fields);
    validate_email(&new.email, &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::invalid(fields));
    }
    Ok(())
}

/// The fields a patch sets, all checked; those it leaves out are not.
pub fn check_patch(patch: &UserPatch) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    if let Some(n) = &patch.name {
        validate_name(n, &mut fields);
    }
    if let Some(e) = &patch.email {
        validate_email(e, &mut fields);
    }
    if !fields.is_empty() {
        return Err(ApiError::invalid(fields));
    }
    Ok(())
}

/// A name as stored: trimmed.
pub fn stored_name(name: &str) -> String {
    name.trim().to_string()
}

/// An email as stored: trimmed and lowercased, so that `A@x.org` and `a@x.org` are one address.
pub fn stored_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

fn validate_name(name: &str, fields: &mut Vec<FieldError>) {
    let n = name.trim().chars().count();
    if n == 0 || n > 100 {
        fields.push(FieldError::new("name", "must be 1 to 100 characters"));
    }
}

/// A deliberately simple check: one `@`, a non-empty local part, a dotted domain, no spaces.
fn validate_email(email: &str, fields: &mut Vec<FieldError>) {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if !ok {
        fields.push(FieldError::new("email", "must be a valid email address"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn new(name: &str, email: &str) -> NewUser {
        NewUser {
            name: name.into(),
            email: email.into(),
        }
    }

    fn invalid_fields(r: Result<(), ApiError>) -> Vec<String> {
        r.unwrap_err().fields.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn a_valid_user_passes() {
        check_new(&new("Ada", "ada@example.org")).unwrap();
        check_new(&new(&"x".repeat(100), "a@b.c")).unwrap();
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let e = check_new(&new("   ", "nope")).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = e.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["name", "email"]);
    }

    #[test]
    fn names_are_counted_in_characters_once_trimmed() {
        check_new(&new(&"é".repeat(100), "a@b.c")).unwrap();
        assert_eq!(
            invalid_fields(check_new(&new(&"é".repeat(101), "a@b.c"))),
            ["name"]
        );
        check_new(&new("  Ada  ", "a@b.c")).unwrap();
    }

    #[test]
    fn emails_the_simple_check_refuses() {
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@b@example.org",
            "a@localhost",
            "a@.example.org",
            "a@example.org.",
            "a b@example.org",
        ] {
            assert_eq!(
                invalid_fields(check_new(&new("Ada", bad))),
                ["email"],
                "{bad:?}"
            );
        }
        let long = format!("{}@example.org", "a".repeat(243));
        assert_eq!(long.len(), 255);
        assert_eq!(invalid_fields(check_new(&new("Ada", &long))), ["email"]);
    }

    #[test]
    fn a_patch_checks_only_what_it_sets() {
        check_patch(&UserPatch {
            name: None,
            email: None,
        })
        .unwrap();
        let bad_email = UserPatch {
            name: None,
            email: Some("nope".into()),
        };
        assert_eq!(invalid_fields(check_patch(&bad_email)), ["email"]);
        let bad_name = UserPatch {
            name: Some(String::new()),
            email: Some("a@b.c".into()),
        };
        assert_eq!(invalid_fields(check_patch(&bad_name)), ["name"]);
    }

    #[test]
    fn stored_forms_are_trimmed_and_the_email_lowercased() {
        assert_eq!(stored_name("  Ada Lovelace "), "Ada Lovelace");
        assert_eq!(stored_email(" Ada@Example.ORG "), "ada@example.org");
    }
}
