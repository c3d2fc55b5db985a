//! Which services a plugin may register (`docs/protocol.md`, `register`).
//!
//! A plugin's manifest says, before it starts, which services it provides (`provides`, plus the
//! service named after the plugin at the plugin's version). Its `register` answer is what the
//! running process claims, and a hostile process could claim anything: `victim@99.0.0` would win
//! every resolution of `victim` (highest version first) and receive calls meant for another
//! plugin, secrets included. So a registered service is routed only when the manifest declares
//! it at exactly that version; anything else is refused, warned about in the plugin's log when
//! it registers, and listed in its status (`refused_services`).
//!
//! The rule is a pure function of the manifest and one declaration, applied where the registry
//! is built ([`crate::Daemon::providers`]) and where the status is shown, so the two cannot
//! disagree.

use crate::caps::{self, Cap};
use crate::logs::PluginLog;
use plugind_protocol::control::RefusedService;
use plugind_protocol::manifest::Manifest;
use plugind_protocol::methods::ServiceDecl;
use std::fmt;

/// Why a registered service was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The manifest does not declare this service at all.
    NotDeclared,
    /// The manifest declares the service at another version (or versions).
    OtherVersion {
        /// The versions the manifest declares for it.
        declared: Vec<String>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotDeclared => f.write_str(
                "not in the manifest's provides (nor the plugin's own name): only declared services are routed",
            ),
            Refusal::OtherVersion { declared } => {
                write!(f, "the manifest declares this service at version {} only", declared.join(", "))
            }
        }
    }
}

/// Whether the plugin of manifest `m` may provide `s`.
pub fn check(m: &Manifest, s: &ServiceDecl) -> Result<(), Refusal> {
    let own = std::iter::once((m.name.as_str(), &m.version));
    let declared: Vec<&semver::Version> = own
        .chain(m.provides.iter().map(|p| (p.name.as_str(), &p.version)))
        .filter(|(name, _)| *name == s.name)
        .map(|(_, v)| v)
        .collect();
    if declared.is_empty() {
        return Err(Refusal::NotDeclared);
    }
    // Compared as versions, so `1.0.0` and `1.0.0+build` are not told apart by accident of
    // spelling; a version that does not parse matches nothing.
    let exact = semver::Version::parse(&s.version).is_ok_and(|v| declared.iter().any(|d| **d == v));
    if exact {
        Ok(())
    } else {
        Err(Refusal::OtherVersion { declared: declared.iter().map(ToString::to_string).collect() })
    }
}

/// The services of `registered` that the plugin may not provide, with why.
pub fn refused(m: &Manifest, registered: &[ServiceDecl]) -> Vec<RefusedService> {
    registered
        .iter()
        .filter_map(|s| {
            check(m, s).err().map(|why| RefusedService {
                name: s.name.clone(),
                version: s.version.clone(),
                reason: why.to_string(),
            })
        })
        .collect()
}

/// Vets a `register` answer as it arrives: cuts its lists to the caps of [`caps::register`] and
/// warns in the plugin's log about every service it may not provide. Refused services stay in
/// the list (the status shows them from it); the registry skips them.
pub fn vet_register(m: &Manifest, services: &mut Vec<ServiceDecl>, log: &PluginLog) {
    if caps::register(services) {
        log.over_cap(
            Cap::Register,
            format!(
                "register: lists cut to {} services, {} methods and {} capabilities each, names to {} bytes",
                caps::REGISTER_SERVICES,
                caps::REGISTER_METHODS,
                caps::REGISTER_CAPABILITIES,
                caps::REGISTER_NAME_BYTES
            ),
        );
    }
    for r in refused(m, services) {
        log.warn(format!("register: service {}@{} refused: {}", r.name, r.version, r.reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse(
            br#"{"name": "gw", "version": "1.2.0", "main": "m.py",
                 "provides": [{"name": "llm", "version": "2.1.0"}]}"#,
        )
        .unwrap()
    }

    fn decl(name: &str, version: &str) -> ServiceDecl {
        ServiceDecl { name: name.into(), version: version.into(), methods: vec![], capabilities: vec![] }
    }

    #[test]
    fn only_declared_services_at_their_versions_pass() {
        let m = manifest();
        assert_eq!(check(&m, &decl("llm", "2.1.0")), Ok(()));
        assert_eq!(check(&m, &decl("gw", "1.2.0")), Ok(()), "its own name at its own version");
        assert_eq!(check(&m, &decl("victim", "99.0.0")), Err(Refusal::NotDeclared));
        assert_eq!(check(&m, &decl("llm", "99.0.0")), Err(Refusal::OtherVersion { declared: vec!["2.1.0".into()] }));
        assert_eq!(check(&m, &decl("gw", "1.2.1")), Err(Refusal::OtherVersion { declared: vec!["1.2.0".into()] }));
        assert!(check(&m, &decl("llm", "not a version")).is_err());
    }

    #[test]
    fn refusals_name_service_version_and_reason() {
        let m = manifest();
        let r = refused(&m, &[decl("llm", "2.1.0"), decl("victim", "99.0.0")]);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].name.as_str(), r[0].version.as_str()), ("victim", "99.0.0"));
        assert!(r[0].reason.contains("provides"), "{}", r[0].reason);
    }
}
