//! The command line as scripts use it: `outpost check` reports the effective settings and
//! names the file and key of every configuration error; layers override in order.

use std::process::{Command, Output};

fn outpost(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
    command.args(args);
    // Start from a clean OUTPOST_ environment so the host's variables cannot leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("OUTPOST_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("outpost runs")
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_prints_effective_settings_with_layers_in_order() {
    let (_dir, path) = write_config(
        "origin = \"http://127.0.0.1:9000\"\nlisten = \"127.0.0.1:7000\"\n[server]\nidle_timeout = \"90s\"\nmax_header_bytes = \"32KiB\"\n",
    );
    let output = outpost(
        &["check", "--config", &path, "--listen", "127.0.0.1:7001"],
        &[
            ("OUTPOST_SERVER__IDLE_TIMEOUT", "2m"),
            ("OUTPOST_LISTEN", "127.0.0.1:7002"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let effective = stdout(&output);
    assert!(
        effective.contains("listen = \"127.0.0.1:7001\""),
        "flag beats env and file:\n{effective}"
    );
    assert!(
        effective.contains("idle_timeout = \"2m\""),
        "env beats file:\n{effective}"
    );
    assert!(
        effective.contains("max_header_bytes = \"32KiB\""),
        "file beats default:\n{effective}"
    );
    assert!(
        effective.contains("header_read_timeout = \"10s\""),
        "defaults shown:\n{effective}"
    );
}

/// `--host-header` sets the default site's Host towards its origin (config `host_header`),
/// and is checked like the setting.
#[test]
fn host_header_flag_sets_the_default_sites_host() {
    let output = outpost(
        &[
            "check",
            "--origin",
            "http://127.0.0.1:9000",
            "--host-header",
            "origin",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("host_header = \"origin\""),
        "{}",
        stdout(&output)
    );
    let output = outpost(
        &[
            "check",
            "--origin",
            "http://127.0.0.1:9000",
            "--host-header",
            "a b\u{1}",
        ],
        &[],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("host-header"),
        "{}",
        stderr(&output)
    );
}

/// Budgets left unset (the fills' and the encoders') follow `memory_capacity`: `check`
/// says what each comes to, as a comment, and says nothing of one that is set; it always
/// says what the memory tier keeps once the fills' budget and the reserve are set aside.
#[test]
fn check_shows_the_derived_fill_budget_only_when_unset() {
    let (_dir, path) =
        write_config("origin = \"http://127.0.0.1:9000\"\n[cache]\nmemory_capacity = \"64MiB\"\n");
    let output = outpost(&["check", "--config", &path], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let effective = stdout(&output);
    assert!(
        effective.contains("# cache.fill_memory_budget = \"8MiB\""),
        "{effective}"
    );
    let (_dir, path) = write_config(
        "origin = \"http://127.0.0.1:9000\"\n[cache]\nmemory_capacity = \"64MiB\"\nfill_memory_budget = \"3MiB\"\n",
    );
    let output = outpost(&["check", "--config", &path], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let effective = stdout(&output);
    assert!(
        effective.contains("fill_memory_budget = \"3MiB\""),
        "{effective}"
    );
    assert!(
        !effective.contains("# cache.fill_memory_budget"),
        "{effective}"
    );
    assert!(
        effective.contains("# compression.encoder_memory_budget = \"4MiB\""),
        "{effective}"
    );
    let (_dir, path) = write_config(
        "origin = \"http://127.0.0.1:9000\"\n[cache]\nfill_memory_budget = \"3MiB\"\n[compression]\nencoder_memory_budget = \"2MiB\"\n",
    );
    let output = outpost(&["check", "--config", &path], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let effective = stdout(&output);
    assert!(
        !effective.contains("# cache.fill_memory_budget")
            && !effective.contains("# compression.encoder_memory_budget"),
        "{effective}"
    );
    // What the tier keeps is always shown: the default capacity less the budget set and
    // the process's default reserve, which is shown while unset.
    assert!(
        effective.contains("# the memory tier holds 223MiB"),
        "{effective}"
    );
    assert!(
        effective.contains("# cache.memory_reserve = \"30MiB\""),
        "{effective}"
    );
}

#[test]
fn shipped_sample_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/outpost.toml");
    let output = outpost(&["check", "--config", path], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
}

/// The package-mirror profile is valid and carries its registries and rules.
#[test]
fn shipped_mirror_profile_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mirror.toml");
    let output = outpost(&["check", "--config", path], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let settings = stdout(&output);
    for expected in [
        "*.deb",
        "*/InRelease",
        "/pypi/_files/",
        "/crates/_files/",
        "kind = \"npm\"",
        "https://deb.debian.org/debian",
    ] {
        assert!(
            settings.contains(expected),
            "{expected} missing from\n{settings}"
        );
    }
}

#[test]
fn bad_path_rules_are_refused_with_their_key() {
    let (_dir, path) =
        write_config("origin = \"http://127.0.0.1:9000\"\n[[cache.rules]]\nmatch = \"a[\"\n");
    let output = outpost(&["check", "--config", &path], &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cache.rules[0].match"),
        "{}",
        stderr(&output)
    );
}

/// Named, and why said once.
#[test]
fn missing_config_file_is_an_error_naming_it() {
    let output = outpost(&["check", "--config", "/nonexistent/outpost.toml"], &[]);
    assert!(!output.status.success());
    let said = stderr(&output);
    assert!(said.contains("/nonexistent/outpost.toml"), "{said}");
    assert_eq!(said.matches("No such file").count(), 1, "said once: {said}");
}

/// A trace that cannot be read, or holds no requests, is an error that names the file and
/// says why once, not a table of empty rows.
#[test]
fn replay_refuses_missing_and_empty_traces_with_one_clear_line() {
    let missing = outpost(&["replay", "/nonexistent/trace.csv"], &[]);
    assert!(!missing.status.success());
    let said = stderr(&missing);
    assert!(said.contains("/nonexistent/trace.csv"), "{said}");
    assert_eq!(said.matches("No such file").count(), 1, "{said}");

    let (_dir, path) = write_config("");
    let empty = outpost(&["replay", "--format", "csv", &path], &[]);
    assert!(!empty.status.success(), "{}", stdout(&empty));
    assert!(stderr(&empty).contains("no requests"), "{}", stderr(&empty));
}

/// `check` refuses what `serve` would refuse at its start (a TLS listener whose
/// certificate cannot be read), and warns of what it would run degraded without (a disk
/// tier directory that cannot be made), without binding or creating anything.
#[test]
fn check_tries_what_serve_needs_at_start() {
    let (dir, path) = write_config(
        "origin = \"http://127.0.0.1:1\"\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\
         cert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    let refused = outpost(&["check", "--config", &path], &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("/nonexistent/cert.pem"),
        "{}",
        stderr(&refused)
    );

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let cache_dir = blocker.join("cache");
    let config = format!(
        "origin = \"http://127.0.0.1:1\"\n[cache]\ndir = \"{}\"\n",
        cache_dir.display()
    );
    std::fs::write(&path, config).unwrap();
    let warned = outpost(&["check", "--config", &path], &[]);
    assert!(warned.status.success(), "{}", stderr(&warned));
    let said = stderr(&warned);
    assert!(
        said.contains("warning: cache.dir") && said.contains("memory tier only"),
        "{said}"
    );
    assert!(!cache_dir.exists());
}

#[test]
fn config_errors_name_file_and_key() {
    let cases = [
        ("origin = \"http://127.0.0.1:9000\"\nlisten_port = 1\n", "listen_port"),
        ("origin = \"ftp://example.com\"\n", "origin"),
        ("origin = \"http://127.0.0.1:9000\"\n[server]\nidle_timeout = \"soon\"\n", "server.idle_timeout"),
        ("origin = \"http://127.0.0.1:9000\"\n[server]\nmax_header_bytes = \"lots\"\n", "server.max_header_bytes"),
        (
            "origin = \"http://127.0.0.1:9000\"\n[forwarding]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "forwarding.trusted_proxies",
        ),
        ("origin = \"http://127.0.0.1:9000\"\n[upstream]\nconnect_timeot = \"1s\"\n", "upstream"),
        ("[[sites]]\nhosts = []\norigin = \"http://127.0.0.1:9000\"\n", "sites[0].hosts"),
        ("listen = \"127.0.0.1:8080\"\n", "origin"),
        ("origin = \"http://127.0.0.1:9000\"\nadmin = \"0.0.0.0:9090\"\n", "admin"),
        (
            "origin = \"http://127.0.0.1:9000\"\nadmin = \"0.0.0.0:9090\"\nadmin_token = \"short\"\n",
            "admin_token",
        ),
    ];
    for (text, key) in cases {
        let (_dir, path) = write_config(text);
        let output = outpost(&["check", "--config", &path], &[]);
        let message = stderr(&output);
        assert!(!output.status.success(), "accepted:\n{text}");
        assert!(
            message.contains(key),
            "error for {key} does not name it: {message}"
        );
        assert!(
            message.contains(&path),
            "error for {key} does not name the file: {message}"
        );
    }
}

#[test]
fn environment_errors_name_the_variable() {
    let output = outpost(
        &["check", "--origin", "http://127.0.0.1:9000"],
        &[("OUTPOST_UPSTREAM__CONNECT_TIMEOUT", "never")],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.to_lowercase().contains("upstream.connect_timeout"),
        "{message}"
    );
    assert!(
        message.contains("environment variable OUTPOST_UPSTREAM__CONNECT_TIMEOUT"),
        "{message}"
    );
    // A mistyped variable is named as set, with the setting it was probably meant for.
    let output = outpost(
        &["check", "--origin", "http://127.0.0.1:9000"],
        &[("OUTPOST_CACHE__MEMORY_CAPACTY", "1GiB")],
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("OUTPOST_CACHE__MEMORY_CAPACTY")
            && message.contains("did you mean `memory_capacity`?"),
        "{message}"
    );
}

#[test]
fn help_lists_the_subcommands() {
    let output = outpost(&["--help"], &[]);
    let help = stdout(&output);
    for word in ["serve", "check", "origin", "demo"] {
        assert!(help.contains(word), "{help}");
    }
    let serve_help = stdout(&outpost(&["serve", "--help"], &[]));
    for flag in ["--listen", "--origin", "--config", "--admin"] {
        assert!(serve_help.contains(flag), "{serve_help}");
    }
}

/// Other tools' variables under our prefix (the bench kit sets OUTPOST_BIN) are not settings
/// and must not stop outpost from starting.
#[test]
fn unrelated_outpost_variables_are_ignored() {
    let output = outpost(
        &["check", "--origin", "http://127.0.0.1:9000"],
        &[("OUTPOST_BIN", "/usr/bin/outpost"), ("OUTPOST_ARGS", "--x")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

/// The real binary: SIGHUP reloads the config file (a new origin answers), SIGTERM stops
/// it cleanly. Waits are polls of observable state, bounded in time.
#[test]
fn sighup_reloads_the_config_file_and_sigterm_stops_cleanly() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    // Two tiny origins answering their name to every request.
    let spawn_origin = |name: &'static str| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        addr
    };
    let first = spawn_origin("first");
    let second = spawn_origin("second");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, path) = write_config(&format!(
        "origin = \"http://{first}\"\nlisten = \"127.0.0.1:{port}\"\n"
    ));

    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config", &path])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped)
        .unwrap();
    let fetch = || -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        stream.read_to_string(&mut out).ok()?;
        out.rsplit("\r\n\r\n").next().map(str::to_string)
    };
    let wait_for = |expected: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if fetch().as_deref() == Some(expected) {
                return true;
            }
            std::thread::yield_now();
        }
        false
    };
    let first_ok = wait_for("first");
    std::fs::write(
        &path,
        format!("origin = \"http://{second}\"\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let hup = Command::new("sh")
        .args(["-c", &format!("kill -HUP {}", child.id())])
        .status()
        .unwrap();
    let second_ok = wait_for("second");
    let term = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(first_ok, "outpost served the first origin");
    assert!(
        hup.success() && second_ok,
        "after SIGHUP the second origin answers"
    );
    assert!(
        term.success() && status.success(),
        "SIGTERM stops outpost cleanly: {status:?}"
    );
}

/// The real binary moves its listeners when a reload changes `listen` and `admin`: the new
/// addresses serve and the old ones stop taking connections. A new address that cannot be
/// bound (taken) refuses the reload, which says so, and the old ones go on serving rather
/// than the node serving nothing.
#[test]
fn sighup_moves_the_listeners_to_new_addresses() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in origin.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nCache-Control: no-store\r\nConnection: close\r\n\r\norigin",
            );
        }
    });
    let free_port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (first, second) = (free_port(), free_port());
    let (first_admin, second_admin) = (free_port(), free_port());
    let config = |port: u16, admin: u16| {
        format!(
            "origin = \"http://{origin_addr}\"\nlisten = \"127.0.0.1:{port}\"\n\
             admin = \"127.0.0.1:{admin}\"\n"
        )
    };
    let (dir, path) = write_config(&config(first, first_admin));
    let log = dir.path().join("outpost.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config", &path])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(crate::support::Reaped)
        .unwrap();
    let logged = |text: &str| std::fs::read_to_string(&log).is_ok_and(|log| log.contains(text));
    let serves = |port: u16| -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut out = String::new();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .is_ok()
            && stream.read_to_string(&mut out).is_ok()
            && out.ends_with("\r\n\r\norigin")
    };
    let refuses = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_err();
    let healthy = |port: u16| -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut out = String::new();
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut out).is_ok()
            && out.starts_with("HTTP/1.1 200")
    };
    let within = |check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    let hup = |pid: u32| {
        Command::new("sh")
            .args(["-c", &format!("kill -HUP {pid}")])
            .status()
            .unwrap()
            .success()
    };
    assert!(within(&|| serves(first)), "serving on the first address");
    assert!(
        within(&|| healthy(first_admin)),
        "admin on its first address"
    );

    // A taken address refuses the reload whole, and says which: `POST /reload` answers it
    // (as `nginx -s reload` keeps the old configuration when a listen fails), SIGHUP logs it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    std::fs::write(&path, config(taken_port, second_admin)).unwrap();
    let mut admin = TcpStream::connect(("127.0.0.1", first_admin)).unwrap();
    admin
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let reload = format!(
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{first_admin}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    admin.write_all(reload.as_bytes()).unwrap();
    let mut answer = String::new();
    admin.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(
        answer.contains(&format!("cannot listen on 127.0.0.1:{taken_port} (listen)")),
        "{answer}"
    );
    assert!(answer.contains("\"reloaded\":false"), "{answer}");
    assert!(hup(child.id()));
    assert!(
        within(&|| logged(&format!("cannot listen on 127.0.0.1:{taken_port}"))),
        "the SIGHUP's refusal is logged"
    );
    assert!(
        serves(first) && healthy(first_admin) && refuses(second_admin),
        "nothing moved while the new address is taken, the admin address neither"
    );

    std::fs::write(&path, config(second, second_admin)).unwrap();
    assert!(hup(child.id()));
    assert!(within(&|| serves(second)), "serving on the new address");
    assert!(
        within(&|| refuses(first)),
        "the old address no longer accepts"
    );
    assert!(
        within(&|| healthy(second_admin)),
        "admin on its new address"
    );
    assert!(
        within(&|| refuses(first_admin)),
        "admin gone from the old one"
    );
    drop(taken);
    let term = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(term.success() && status.success(), "{status:?}");
}

/// `--origin` given several times makes one pool of them (issue 15), which `check` prints
/// with its defaults; a pool that names no server, or a site naming a missing pool, is
/// refused with its key.
#[test]
fn several_origins_make_a_pool_and_bad_pools_are_refused() {
    let output = outpost(
        &[
            "check",
            "--origin",
            "http://127.0.0.1:9001",
            "--origin",
            "http://127.0.0.1:9002",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(printed.contains("pool = \"origin\""), "{printed}");
    assert!(
        printed.contains("url = \"http://127.0.0.1:9002/\""),
        "{printed}"
    );
    assert!(printed.contains("selection = \"round-robin\""), "{printed}");

    let (_dir, path) =
        write_config("pool = \"missing\"\n[[pools]]\nname = \"app\"\nservers = []\n");
    let output = outpost(&["check", "--config", &path], &[]);
    assert!(!output.status.success());
    let errors = stderr(&output);
    assert!(
        errors.contains("key `pool`: no [[pools]] entry is named `missing`"),
        "{errors}"
    );
    assert!(
        errors.contains("key `pools[0].servers`: a pool needs at least one server"),
        "{errors}"
    );
}

/// `outpost serve` in front of a closed port, started by `sh` after `shell_prefix` (shell
/// commands ending in `&&`, or nothing); returns it and its port once it accepts
/// connections.
fn serving_outpost(shell_prefix: &str) -> (crate::support::Reaped, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = format!(
        "{shell_prefix} exec \"$0\" serve --listen 127.0.0.1:{port} --origin http://127.0.0.1:9"
    );
    let child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_outpost")])
        .env_remove("RUST_LOG")
        .env_remove("_RJEM_MALLOC_CONF")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(crate::support::Reaped)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "outpost did not start"
        );
        std::thread::yield_now();
    }
    (child, port)
}

/// The allocator returns freed memory to the system from a thread of its own (so memory
/// falls back after a burst even if the node then goes quiet): `outpost serve` runs one.
#[test]
fn serve_runs_the_allocators_background_thread() {
    let (mut child, _) = serving_outpost("");
    let tasks = format!("/proc/{}/task", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let names = loop {
        let names: Vec<String> = std::fs::read_dir(&tasks)
            .unwrap()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect();
        if names.iter().any(|name| name == "jemalloc_bg_thd")
            || std::time::Instant::now() > deadline
        {
            break names;
        }
        std::thread::yield_now();
    };
    let _ = child.kill();
    let _ = child.wait();
    let background = names
        .iter()
        .filter(|name| *name == "jemalloc_bg_thd")
        .count();
    assert_eq!(background, 1, "threads: {names:?}");
}

/// `outpost serve` raises its soft limit on open files to the hard one: connections and
/// the disk tier's open files are all descriptors, and a soft limit of 1024 is common.
#[test]
fn serve_raises_the_open_file_limit_to_the_hard_limit() {
    use std::io::Read;
    let (mut child, _) = serving_outpost("ulimit -Sn 256 &&");
    let mut limits = String::new();
    std::fs::File::open(format!("/proc/{}/limits", child.id()))
        .unwrap()
        .read_to_string(&mut limits)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
    let hard = match open_files[1] {
        "unlimited" => nr_open.trim(),
        hard => hard,
    };
    assert_eq!(
        open_files[0], hard,
        "soft limit raised to the hard one: {limits}"
    );
}

/// On one CPU `serve` runs tokio's current-thread scheduler (`runtime` in main.rs): it
/// must start, accept and answer there as it does on many. The origin is a closed port,
/// so the answer is the 502 of RFC 9110 15.6.3, which takes a connect attempt through the
/// runtime's I/O driver.
#[test]
fn serve_on_one_cpu_answers_requests() {
    use std::io::{Read, Write};
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let first_cpu: String = allowed.chars().take_while(char::is_ascii_digit).collect();
    let (mut child, port) = serving_outpost(&format!("taskset -pc {first_cpu} $$ >/dev/null &&"));
    let affinity = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /one-cpu HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        affinity.contains(&format!("Cpus_allowed_list:\t{first_cpu}\n")),
        "{affinity}"
    );
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}
