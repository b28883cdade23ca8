//! Image references with Docker's defaults: `python:3.11` is `docker.io/library/python:3.11`.

use std::fmt;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/python`.
    pub repository: String,
    /// Tag, `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// Content digest, e.g. `sha256:...`.
    pub digest: Option<String>,
}

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {why}")]
pub struct ReferenceError {
    /// The input.
    pub reference: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]` the way Docker does: the first path component is a
    /// registry only if it has a `.` or a `:` or is `localhost`; single-component names on Docker Hub live
    /// under `library/`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let err = |why| ReferenceError { reference: s.to_string(), why };
        if s.is_empty() || s.len() > 4096 {
            return Err(err("empty or too long"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let (algo, hex) = d.split_once(':').ok_or_else(|| err("digest must be algorithm:hex"))?;
                if algo != "sha256"
                    || hex.len() != 64
                    || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(err("digest must be sha256: and 64 lowercase hex digits"));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a registry port).
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(name[slash + i + 1..].to_string())),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(err("tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -"));
            }
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), path.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(err("repository components must be lowercase letters, digits and . _ -"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Reference;

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_defaults() {
        assert_eq!(full("python:3.11"), "docker.io/library/python:3.11");
        assert_eq!(full("python"), "docker.io/library/python:latest");
        assert_eq!(full("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(full("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(full("localhost/x:1"), "localhost/x:1");
        assert_eq!(full("ghcr.io/org/team/app:2.0-rc.1"), "ghcr.io/org/team/app:2.0-rc.1");
        assert_eq!(full("registry.local:5000/a/b:c"), "registry.local:5000/a/b:c");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(full(&format!("python@{d}")), format!("docker.io/library/python@{d}"));
        assert_eq!(full(&format!("python:3.11@{d}")), format!("docker.io/library/python:3.11@{d}"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "Python", "python:", "python:-x", "a//b", "python@sha256:abc", "python@md5:00", "x/../y:1"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
