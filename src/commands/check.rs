//! `outpost check`: the configuration as `serve` would take it. Loading it validates the
//! settings; this also tries what `serve` refuses to start without (the TLS listeners'
//! certificates and keys, the upstream TLS roots) and warns of what it would run degraded
//! without (a disk tier whose directory cannot be written), binding and opening nothing.

use std::path::Path;

use outpost::Config;

/// Fails as `serve` would at its start; otherwise the warnings to print.
///
/// # Errors
/// An unusable certificate, key or certificate authority file.
pub fn preflight(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut warnings = outpost::server::tls::preflight(config, std::time::SystemTime::now())?;
    let upstream = outpost::upstream::Upstream::new(config)?;
    for pool in &config.pools {
        upstream.for_pool(config, pool)?;
    }
    if let Some(dir) = config.cache.dir.as_deref() {
        if !dir.as_os_str().is_empty() {
            if let Err(why) = probe_writable(dir) {
                warnings.push(format!(
                    "cache.dir `{}`: {why}; serve would run with the memory tier only",
                    dir.display()
                ));
            }
        }
    }
    Ok(warnings)
}

/// Whether the disk tier could live in `dir`: the directory, or the nearest of its
/// ancestors that exists (serve creates the rest), takes a new file. The probe file is
/// removed at once; a running outpost's index is not touched (it holds a lock on it).
fn probe_writable(dir: &Path) -> Result<(), String> {
    let Some(existing) = dir.ancestors().find(|path| path.exists()) else {
        return Err("no part of the path exists".to_string());
    };
    if !existing.is_dir() {
        return Err(format!("`{}` is not a directory", existing.display()));
    }
    let probe = existing.join(format!(".outpost-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(err) => Err(format!("cannot write in `{}`: {err}", existing.display())),
    }
}
