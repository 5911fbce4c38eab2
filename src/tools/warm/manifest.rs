//! What a machine will install, read from the files its package managers write: a pip
//! `requirements.txt` (pinned) or `pylock.toml`, a `Cargo.lock`, an npm
//! `package-lock.json`, or a list of Debian package names.

use std::path::Path;

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Malformed { path: String, detail: String },
    #[error("{0}: cannot tell which package manager wrote it; prefix it with pip:, cargo:, npm: or debian:")]
    UnknownKind(String),
}

/// Which registry a manifest's packages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pip,
    Cargo,
    Npm,
    Debian,
}

/// One package to warm: its name and the exact version (Debian lists name none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: Option<String>,
    /// The lock file's checksum, where it records one (cargo's `{sha256-checksum}`).
    pub checksum: Option<String>,
}

/// A manifest's packages, and lines it could not use (unpinned requirements).
#[derive(Debug, Default)]
pub struct Manifest {
    pub packages: Vec<Package>,
    pub skipped: Vec<String>,
}

/// Reads `spec`: a path, optionally prefixed with its kind (`debian:packages.list`).
///
/// # Errors
/// [`ManifestError`] for an unreadable or malformed file, or one whose kind cannot be told.
pub fn read(spec: &str) -> Result<(Kind, Manifest), ManifestError> {
    let (kind, path) = match spec.split_once(':') {
        Some(("pip", path)) => (Some(Kind::Pip), path),
        Some(("cargo", path)) => (Some(Kind::Cargo), path),
        Some(("npm", path)) => (Some(Kind::Npm), path),
        Some(("debian", path)) => (Some(Kind::Debian), path),
        _ => (None, spec),
    };
    let kind = match kind {
        Some(kind) => kind,
        None => guess(Path::new(path)).ok_or_else(|| ManifestError::UnknownKind(path.into()))?,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Unreadable {
        path: path.to_string(),
        source,
    })?;
    let malformed = |detail: String| ManifestError::Malformed {
        path: path.to_string(),
        detail,
    };
    let manifest = match kind {
        Kind::Pip if path.ends_with(".toml") => pylock(&text).map_err(malformed)?,
        Kind::Pip => requirements(&text),
        Kind::Cargo => cargo_lock(&text).map_err(malformed)?,
        Kind::Npm => package_lock(&text).map_err(malformed)?,
        Kind::Debian => debian_list(&text),
    };
    Ok((kind, manifest))
}

fn guess(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    if name == "Cargo.lock" {
        Some(Kind::Cargo)
    } else if name == "package-lock.json" || name == "npm-shrinkwrap.json" {
        Some(Kind::Npm)
    } else if name.starts_with("pylock.") && name.ends_with(".toml")
        || name.starts_with("requirements") && name.ends_with(".txt")
    {
        Some(Kind::Pip)
    } else {
        None
    }
}

/// Pinned lines (`name==version`, extras and markers allowed, `--hash` options ignored).
fn requirements(text: &str) -> Manifest {
    let mut manifest = Manifest::default();
    let mut logical = String::new();
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or_default();
        if let Some(continued) = line.trim_end().strip_suffix('\\') {
            logical.push_str(continued);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let requirement = std::mem::take(&mut logical);
        let requirement = requirement.trim();
        if requirement.is_empty() || requirement.starts_with('#') || requirement.starts_with('-') {
            continue;
        }
        let spec = requirement.split(';').next().unwrap_or_default();
        let spec = spec.split(" --").next().unwrap_or_default().trim();
        match spec.split_once("==") {
            Some((name, version))
                if !version.contains(['*', ','])
                    && !version.trim().is_empty()
                    && !name.trim().is_empty() =>
            {
                let name = name.split('[').next().unwrap_or_default().trim();
                manifest.packages.push(Package {
                    name: name.to_string(),
                    version: Some(version.trim().to_string()),
                    checksum: None,
                });
            }
            _ => manifest
                .skipped
                .push(format!("{requirement} (not pinned with ==)")),
        }
    }
    manifest
}

/// The string fields of each table in the array of tables `key` of a TOML document.
fn toml_tables(text: &str, key: &str) -> Result<Vec<impl Fn(&str) -> Option<String>>, String> {
    let lock: toml::Value = toml::from_str(text).map_err(|err| err.to_string())?;
    let tables = lock
        .get(key)
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(tables
        .into_iter()
        .map(|table| move |name: &str| table.get(name)?.as_str().map(str::to_string))
        .collect())
}

/// PEP 751 `pylock.toml`: `[[packages]]` with `name` and `version`.
fn pylock(text: &str) -> Result<Manifest, String> {
    let mut manifest = Manifest::default();
    for field in toml_tables(text, "packages")? {
        match (field("name"), field("version")) {
            (Some(name), Some(version)) => manifest.packages.push(Package {
                name,
                version: Some(version),
                checksum: None,
            }),
            (name, _) => manifest
                .skipped
                .push(format!("{} (no version)", name.unwrap_or_default())),
        }
    }
    Ok(manifest)
}

/// `Cargo.lock`: packages from a registry (path and git dependencies need none).
fn cargo_lock(text: &str) -> Result<Manifest, String> {
    let mut manifest = Manifest::default();
    for field in toml_tables(text, "package")? {
        let from_registry =
            field("source").is_some_and(|s| s.starts_with("registry+") || s.starts_with("sparse+"));
        if let (true, Some(name), Some(version)) = (from_registry, field("name"), field("version"))
        {
            manifest.packages.push(Package {
                name,
                version: Some(version),
                checksum: field("checksum"),
            });
        }
    }
    Ok(manifest)
}

/// `package-lock.json`, lockfile versions 2 and 3 (`packages`) or 1 (`dependencies`).
fn package_lock(text: &str) -> Result<Manifest, String> {
    let lock: serde_json::Value = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let mut manifest = Manifest::default();
    if let Some(packages) = lock.get("packages").and_then(|p| p.as_object()) {
        for (path, package) in packages {
            let Some((_, name)) = path.rsplit_once("node_modules/") else {
                continue; // the root project
            };
            if package.get("link").and_then(serde_json::Value::as_bool) == Some(true) {
                continue;
            }
            let name = package.get("name").and_then(|n| n.as_str()).unwrap_or(name);
            if let Some(version) = package.get("version").and_then(|v| v.as_str()) {
                manifest.packages.push(Package {
                    name: name.to_string(),
                    version: Some(version.to_string()),
                    checksum: None,
                });
            }
        }
    } else if let Some(dependencies) = lock.get("dependencies").filter(|d| d.is_object()) {
        lock_v1(dependencies, &mut manifest);
    } else {
        // Another shape would read as no packages at all: say so rather than warm
        // nothing in silence.
        return Err(
            "neither a `packages` object (lockfileVersion 2, 3) nor `dependencies` (1)".into(),
        );
    }
    manifest
        .packages
        .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    manifest.packages.dedup();
    Ok(manifest)
}

fn lock_v1(dependencies: &serde_json::Value, manifest: &mut Manifest) {
    for (name, dependency) in dependencies.as_object().into_iter().flatten() {
        if let Some(version) = dependency.get("version").and_then(|v| v.as_str()) {
            manifest.packages.push(Package {
                name: name.clone(),
                version: Some(version.to_string()),
                checksum: None,
            });
        }
        if let Some(nested) = dependency.get("dependencies") {
            lock_v1(nested, manifest);
        }
    }
}

/// One Debian package name per line (`#` comments); `name=version` pins a version.
fn debian_list(text: &str) -> Manifest {
    let mut manifest = Manifest::default();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        for word in line.split_whitespace() {
            let (name, version) = match word.split_once('=') {
                Some((name, version)) => (name, Some(version.to_string())),
                None => (word, None),
            };
            manifest.packages.push(Package {
                name: name.to_string(),
                version,
                checksum: None,
            });
        }
    }
    manifest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_keep_pinned_lines_only() {
        let manifest = requirements(
            "# tools\nrequests==2.31.0 \\\n    --hash=sha256:abc\nrich[jupyter]==13.7.0 ; python_version >= \"3.8\"\nflask>=2\n-r other.txt\n",
        );
        let names: Vec<(&str, &str)> = manifest
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_deref().unwrap()))
            .collect();
        assert_eq!(names, [("requests", "2.31.0"), ("rich", "13.7.0")]);
        assert_eq!(manifest.skipped.len(), 1);
        let empty_pins = requirements("requests==\n==1.0\n");
        assert!(empty_pins.packages.is_empty());
        assert_eq!(empty_pins.skipped.len(), 2);
    }

    /// A package-lock.json of no known shape is an error, not an empty list.
    #[test]
    fn a_package_lock_of_no_known_shape_is_refused() {
        for odd in [r#"{"packages": 5}"#, r#"{"lockfileVersion": 3}"#] {
            assert!(package_lock(odd).is_err(), "{odd}");
        }
        let no_dependencies = package_lock(r#"{"packages": {"": {"name": "app"}}}"#).unwrap();
        assert!(no_dependencies.packages.is_empty());
    }

    #[test]
    fn lock_files_list_registry_packages() {
        let cargo = cargo_lock(
            "version = 3\n[[package]]\nname = \"serde\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"ab\"\n[[package]]\nname = \"mine\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        assert_eq!(cargo.packages.len(), 1);
        assert_eq!(cargo.packages[0].checksum.as_deref(), Some("ab"));
        let npm = package_lock(
            r#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/a":{"version":"1.0.0"},"node_modules/a/node_modules/@s/b":{"version":"2.0.0"},"node_modules/l":{"link":true}}}"#,
        )
        .unwrap();
        let names: Vec<&str> = npm.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["@s/b", "a"]);
        let debian = debian_list("curl\n# c\nvim=2:9.0 git\n");
        assert_eq!(debian.packages.len(), 3);
        assert_eq!(debian.packages[1].version.as_deref(), Some("2:9.0"));
    }
}
