//! The `annals` binary's management commands, run as a user would run them.

use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::get_array;

fn annals(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .args(args)
        .env("ANNALS_DATABASE_URL", db)
        .env_remove("ANNALS_API_KEY")
        .env_remove("ANNALS_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("annals runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn keys_create_list_toggle_delete_and_the_key_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db").display().to_string();

    let out = annals(&db, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = annals(
        &db,
        &[
            "keys",
            "create",
            "--client-id",
            "my-app",
            "--name",
            "My App",
            "--rate-limit",
            "100",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("ank_"))
        .expect("key printed")
        .to_string();
    let key_id = key[4..20].to_string();

    // Only the answer: no log lines (migration chatter) around it.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // For scripts: the new key as JSON.
    let out = annals(
        &db,
        &[
            "keys",
            "create",
            "--client-id",
            "ci",
            "--name",
            "CI",
            "--scopes",
            "events:read",
            "--json",
        ],
    );
    assert!(out.status.success() && out.stderr.is_empty());
    let created: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(created["key"].as_str().unwrap().starts_with("ank_"));
    assert_eq!(created["client_id"], "ci");
    assert_eq!(created["scopes"], json!(["events:read"]));

    let out = annals(&db, &["keys", "list", "--json"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["key_id"], created["key_id"]);
    assert_eq!(list[0]["key_id"], key_id);
    assert_eq!(list[0]["client_id"], "my-app");
    assert_eq!(list[0]["rate_limit"], 100);
    assert_eq!(list[0]["scopes"], json!(["events:write", "events:read"]));
    assert!(
        !stdout(&out).contains(&key[21..]),
        "the secret is never listed"
    );

    // the key works against a server on the same database
    let mut args = annals::config::ServeArgs::with_database(db.clone());
    args.api_key = Some("unused-static-key-0".into());
    let server = annals::server::start(args).await.unwrap();
    let http = crate::helpers::http();
    let post = |k: String| {
        let http = http.clone();
        let url = format!("http://{}/events", server.addr);
        async move {
            http.post(url)
                .header("x-api-key", k)
                .json(&json!({"event_type": "cli.key.used"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(post(key.clone()).await, StatusCode::CREATED);

    let out = annals(&db, &["keys", "toggle", "--client-id", "my-app"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("no"), "{}", stdout(&out));
    // another process changed the key: this server sees it within its cache lifetime
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(post(key.clone()).await, StatusCode::UNAUTHORIZED);

    let out = annals(&db, &["keys", "delete", "--key-id", &key_id]);
    assert!(out.status.success());
    let out = annals(&db, &["keys", "delete", "--key-id", &key_id]);
    assert!(!out.status.success(), "deleting a missing key fails");
    server.stop().await.unwrap();
}

/// `annals.toml` in the working directory (or `ANNALS_CONFIG`) supplies settings the
/// environment doesn't; the environment wins; an unknown setting stops the command.
#[test]
fn settings_come_from_annals_toml_below_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_annals"));
        command
            .arg("migrate")
            .current_dir(dir.path())
            .env_remove("ANNALS_DATABASE_URL")
            .env_remove("ANNALS_CONFIG");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("annals runs")
    };
    std::fs::write(
        dir.path().join("annals.toml"),
        "database_url = \"from-toml.db\"\nmax_batch = 10\n",
    )
    .unwrap();
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("from-toml.db").exists());

    let out = run(&[("ANNALS_DATABASE_URL", "from-env.db")]);
    assert!(out.status.success());
    assert!(
        dir.path().join("from-env.db").exists(),
        "the environment wins"
    );

    let elsewhere = dir.path().join("other.toml");
    std::fs::write(&elsewhere, "database_url = \"from-other.db\"\n").unwrap();
    let out = run(&[("ANNALS_CONFIG", elsewhere.to_str().unwrap())]);
    assert!(out.status.success());
    assert!(
        dir.path().join("from-other.db").exists(),
        "ANNALS_CONFIG names the file"
    );

    std::fs::write(dir.path().join("annals.toml"), "colour = \"red\"\n").unwrap();
    let out = run(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown setting 'colour'"), "{stderr}");
    assert_eq!(
        stderr.matches("annals.toml").count(),
        1,
        "the file named once: {stderr}"
    );
    let other = dir.path().join("prod.toml");
    std::fs::write(&other, "listen = 127.0.0.1\n").unwrap();
    let out = run(&[("ANNALS_CONFIG", other.to_str().unwrap())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prod.toml: not valid TOML") && stderr.contains("line 1"),
        "{stderr}"
    );
    let out = run(&[("ANNALS_CONFIG", "/nonexistent/annals.toml")]);
    assert!(!out.status.success(), "a named file must exist");
}

#[test]
fn bad_cli_input_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db").display().to_string();
    // `keys create` for client `ok` named `x`, with `extra` arguments.
    let create = |extra: &[&'static str]| {
        let mut args = vec!["keys", "create", "--client-id", "ok", "--name", "x"];
        args.extend_from_slice(extra);
        args
    };
    for args in [
        vec!["keys", "create", "--client-id", "bad id", "--name", "x"],
        create(&["--scopes", "root"]),
        vec!["keys", "delete"],
        vec!["keys", "toggle", "--client-id", "a", "--key-id", "b"],
        // Nothing to measure.
        vec!["bench", "--concurrency", "0"],
        vec!["bench", "--batch-size", "0"],
        // Expired on creation, or past the year 9999 (rendered `+12978-…` before, or worse).
        create(&["--expires-in-days", "0"]),
        create(&["--expires-in-days", "4000000"]),
    ] {
        let out = annals(&db, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // A name that would forge a row of `keys list`, or drive the operator's terminal.
    for name in ["a\nb", "\u{1b}[2J"] {
        let out = annals(
            &db,
            &["keys", "create", "--client-id", "ok", "--name", name],
        );
        assert!(!out.status.success(), "{name:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("control characters"), "{stderr}");
    }

    // bad configuration stops `serve` before it opens or creates anything
    let refused = |database: &str, key: Option<&str>, want: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_annals"));
        command
            .arg("serve")
            .current_dir(dir.path())
            .env("ANNALS_DATABASE_URL", database)
            .env("ANNALS_LISTEN", "127.0.0.1:0");
        match key {
            Some(key) => command.env("ANNALS_API_KEY", key),
            None => command.env_remove("ANNALS_API_KEY"),
        };
        let out = command.output().expect("annals runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{database} {key:?}");
        assert!(stderr.contains(want), "{database} {key:?}: {stderr}");
    };
    refused(
        "mysql://db.internal/annals",
        None,
        "not a supported database",
    );
    refused(":memory:", None, "only in memory");
    refused("store/", None, "names a directory");
    refused(
        "file:cli.db?mode=memory",
        None,
        "'file:' URIs are not supported",
    );
    refused(&db, Some("short-key"), "at least 16 characters");
    refused(
        &db,
        Some(" padded-static-key-0 "),
        "without surrounding spaces",
    );
    // Store settings out of range: a 0 ms query timeout stopped every query on SQLite and
    // meant none on PostgreSQL; huge values panicked (the queue) or overflowed (the deadline).
    for (name, value) in [
        ("ANNALS_QUERY_TIMEOUT_MS", "0"),
        ("ANNALS_QUERY_TIMEOUT_MS", "18446744073709551615"),
        ("ANNALS_WRITE_QUEUE_JOBS", "0"),
        ("ANNALS_WRITE_QUEUE_JOBS", "18446744073709551615"),
        ("ANNALS_WRITE_QUEUE_BYTES", "18446744073709551615"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_annals"))
            .arg("serve")
            .current_dir(dir.path())
            .env("ANNALS_DATABASE_URL", &db)
            .env("ANNALS_LISTEN", "127.0.0.1:0")
            .env(name, value)
            .output()
            .expect("annals runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value}");
        assert!(stderr.contains("is not in"), "{name}={value}: {stderr}");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("cli.db")),
        "nothing else was created: {names:?}"
    );
}

#[test]
fn first_start_prints_an_admin_key_once() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("first.db").display().to_string();
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("ANNALS_DATABASE_URL", &db)
            .env_remove("ANNALS_API_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // wait until it is listening, then stop it
        let stderr = child.stderr.take().unwrap();
        for line in BufReader::new(stderr).lines() {
            if line.unwrap().contains("listening") {
                break;
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A start that can't listen (the port is taken) must not make the key it could not show.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failed = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args([
            "serve",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .env("ANNALS_DATABASE_URL", &db)
        .env_remove("ANNALS_API_KEY")
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("listening on"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(!String::from_utf8_lossy(&failed.stdout).contains("ank_"));
    drop(taken);
    assert!(start().contains("ank_"), "first start prints a key");
    assert!(!start().contains("ank_"), "second start does not");
}

/// A key command on a SQLite path with no database creates one (a first key may come before
/// the first start) and says so, so a mistyped path is noticed; on an existing database it
/// says nothing.
#[test]
fn a_key_command_that_creates_the_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("typo.db").display().to_string();
    let out = annals(&db, &["keys", "list"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no database at") && stderr.contains("typo.db"),
        "{stderr}"
    );
    let out = annals(&db, &["keys", "list"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `annals backup` copies a store while its server keeps taking events: the copy holds every
/// event acknowledged before the backup began, with gapless seqs, and its audit log, and can
/// be served as it is. It never overwrites a file, and says what to use for PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_a_store_that_is_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db").display().to_string();
    const KEY: &str = "backup-static-key-0123";
    let key = KEY;
    let mut args = annals::config::ServeArgs::with_database(db.clone());
    args.api_key = Some(key.into());
    let server = annals::server::start(args).await.unwrap();
    let http = crate::helpers::http();
    let url = format!("http://{}/v1/events", server.addr);
    let writer = http.clone();
    let post = move |n: usize| {
        let (http, url) = (writer.clone(), url.clone());
        async move {
            let r = http
                .post(url)
                .header("x-api-key", KEY)
                .json(&json!({"event_type": "backup.row.written", "data": {"n": n}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    };
    for n in 0..200 {
        post(n).await;
    }
    // Writers keep going while the backup runs.
    let writing = tokio::spawn({
        let post = post.clone();
        async move {
            for n in 200..600 {
                post(n).await;
            }
        }
    });
    let copy = dir.path().join("copies/first.db").display().to_string();
    let out = tokio::task::spawn_blocking({
        let (db, copy) = (db.clone(), copy.clone());
        move || annals(&db, &["backup", &copy])
    })
    .await
    .unwrap();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("integrity check"), "{text}");
    writing.await.unwrap();
    server.stop().await.unwrap();

    // The copy serves: at least the 200 events acknowledged before it began, seqs 1..n.
    let mut args = annals::config::ServeArgs::with_database(copy.clone());
    args.api_key = Some(key.into());
    let restored = annals::server::start(args).await.unwrap();
    let base = format!("http://{}", restored.addr);
    let events = get_array(&format!("{base}/v1/events?limit=1000&order=asc"), key).await;
    assert!(
        events.len() >= 200 && events.len() <= 600,
        "{}",
        events.len()
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1);
    }
    assert!(
        text.contains(&format!("Copied {} events", events.len())),
        "{text}"
    );
    let logs = get_array(
        &format!("{base}/v1/audit/logs?endpoint=/v1/events&limit=1000"),
        key,
    )
    .await;
    assert!(!logs.is_empty(), "the audit log was copied too");
    restored.stop().await.unwrap();

    // Never over an existing file; a missing store is not created; PostgreSQL is not ours.
    let out = annals(&db, &["backup", &copy]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let missing = dir.path().join("missing.db").display().to_string();
    let out = annals(
        &missing,
        &["backup", &dir.path().join("x.db").display().to_string()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no SQLite store"));
    assert!(!std::path::Path::new(&missing).exists());
    let out = annals("postgres://nobody@127.0.0.1:1/none", &["backup", "x.db"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
}
