//! The binary as a user runs it: exit codes and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn callbridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callbridge"));
    // Start from a clean environment so the developer's own settings do not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLBRIDGE_") || k.starts_with("OPENAI_") || k.starts_with("TWILIO_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn audio_convert_round_trips_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let wav24 = dir.path().join("speech24.wav");
    let out = callbridge()
        .args(["audio", "convert"])
        .arg(fixture("speech.ulaw"))
        .arg(&wav24)
        .args(["--rate", "24000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reader = hound::WavReader::open(&wav24).unwrap();
    assert_eq!(reader.spec().sample_rate, 24000);
    let input_len = std::fs::metadata(fixture("speech.ulaw")).unwrap().len() as u32;
    assert!(reader.duration() >= input_len * 3);

    let back = dir.path().join("back.ulaw");
    let out = callbridge()
        .args(["audio", "convert"])
        .arg(&wav24)
        .arg(&back)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::metadata(&back).unwrap().len() >= input_len as u64);
}

#[test]
fn audio_convert_errors_are_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ulaw");
    std::fs::write(&empty, b"").unwrap();
    let stereo = dir.path().join("stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&stereo, spec).unwrap();
    for _ in 0..160 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"not a wav file at all").unwrap();
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (garbage, "x.ulaw", "not a readable WAV file"),
        (empty, "x.wav", "empty"),
        (stereo, "x.ulaw", "not mono"),
        (fixture("speech.ulaw"), "x.mp3", "unknown extension"),
        (dir.path().join("missing.ulaw"), "x.wav", "cannot read"),
    ];
    for (input, output, expect) in cases {
        let out = callbridge()
            .args(["audio", "convert"])
            .arg(&input)
            .arg(dir.path().join(output))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{input:?} should fail");
        assert!(err.contains(expect), "{input:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        // The cause is said once, not repeated by the error chain.
        let tail = err.trim().rsplit(": ").next().unwrap_or_default();
        assert_eq!(err.matches(tail).count(), 1, "cause repeated: {err}");
    }
}

#[test]
fn serve_refuses_to_start_without_public_url() {
    let out = callbridge()
        .arg("serve")
        .env("OPENAI_API_KEY", "sk-x")
        .env("TWILIO_AUTH_TOKEN", "t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("public_url"), "{}", stderr(&out));
}

#[test]
fn serve_refuses_openai_without_api_key() {
    let out = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com")
        .env("TWILIO_AUTH_TOKEN", "t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("OPENAI_API_KEY"), "{}", stderr(&out));
}

#[test]
fn serve_refuses_signature_checks_without_auth_token() {
    let out = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com")
        .env("OPENAI_API_KEY", "sk-x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("TWILIO_AUTH_TOKEN"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_reports_bad_config_values_by_key() {
    let out = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com")
        .env("CALLBRIDGE_REALTIME__DIALECT", "klingon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("realtime.dialect"),
        "{}",
        stderr(&out)
    );
    let out = callbridge()
        .args(["serve", "--config", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/x.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn secrets_never_reach_the_logs() {
    // Start-up fails after secrets were read (bad listen address): nothing
    // it prints may contain them.
    let out = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com")
        .env("CALLBRIDGE_LISTEN", "203.0.113.1:1")
        .env("OPENAI_API_KEY", "sk-very-secret-value")
        .env("TWILIO_AUTH_TOKEN", "twilio-very-secret")
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(!out.status.success());
    assert!(!all.contains("very-secret"), "{all}");
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    use std::io::BufRead as _;
    let mut child = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_LISTEN", "127.0.0.1:0")
        .env("CALLBRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CALLBRIDGE_PUBLIC_URL", "http://127.0.0.1:9")
        .env("CALLBRIDGE_REALTIME__URL", "ws://127.0.0.1:9/v1/realtime")
        .env("CALLBRIDGE_TWILIO__VALIDATE_SIGNATURES", "false")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let serving = line.contains("callbridge serving");
        seen.push(line);
        if serving {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("callbridge serving")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "{seen:?}");
}

#[test]
fn serve_reports_every_missing_setting_in_one_error() {
    let out = callbridge().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("3 required settings are missing"), "{err}");
    for name in ["public_url", "OPENAI_API_KEY", "TWILIO_AUTH_TOKEN"] {
        assert!(err.contains(&format!("- {name}: ")), "{name}: {err}");
    }
    // Settings that are not needed are not asked for: a local peer needs no
    // key, and unchecked signatures need no token.
    let out = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_REALTIME__URL", "ws://127.0.0.1:9/v1/realtime")
        .env("CALLBRIDGE_TWILIO__VALIDATE_SIGNATURES", "false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("public_url is required"), "{err}");
    assert!(
        !err.contains("OPENAI_API_KEY") && !err.contains("TWILIO_AUTH_TOKEN"),
        "{err}"
    );
}

#[test]
fn serve_help_names_the_required_settings_and_both_ports() {
    let out = callbridge().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Required settings",
        "public_url",
        "CALLBRIDGE_PUBLIC_URL",
        "OPENAI_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "admin_listen",
        "/metrics",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// Waits for `callbridge serving` on a JSON-logging child's stderr; its fields.
fn serving_line(child: &mut std::process::Child) -> serde_json::Value {
    use std::io::BufRead as _;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if value["fields"]["message"] == "callbridge serving" {
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return value["fields"].clone();
        }
        seen.push(line);
    }
    panic!("serve never said it was serving: {seen:?}");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serve_starts_beside_kubernetes_service_links_and_probes_use_the_admin_port() {
    // What the kubelet injects for a Service named `callbridge`: once, this
    // stopped serve with "config key `port`: unknown field".
    let mut child = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_PORT", "tcp://10.96.0.12:8080")
        .env("CALLBRIDGE_PORT_8080_TCP", "tcp://10.96.0.12:8080")
        .env("CALLBRIDGE_PORT_8080_TCP_PROTO", "tcp")
        .env("CALLBRIDGE_PORT_8080_TCP_PORT", "8080")
        .env("CALLBRIDGE_PORT_8080_TCP_ADDR", "10.96.0.12")
        .env("CALLBRIDGE_SERVICE_HOST", "10.96.0.12")
        .env("CALLBRIDGE_SERVICE_PORT", "8080")
        .env("CALLBRIDGE_SERVICE_PORT_HTTP", "8080")
        .env("CALLBRIDGE_LISTEN", "127.0.0.1:0")
        .env("CALLBRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com")
        .env("CALLBRIDGE_LOG__FORMAT", "json")
        .env("OPENAI_API_KEY", "sk-x")
        .env("TWILIO_AUTH_TOKEN", "t")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let serving = serving_line(&mut child);
    let public = serving["listen"].as_str().unwrap().to_owned();
    let admin = serving["admin_listen"].as_str().unwrap().to_owned();
    assert_ne!(public, admin);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let on_admin = http_get(&admin, path);
        assert!(
            on_admin.starts_with("HTTP/1.1 200"),
            "admin {path}: {on_admin}"
        );
        let on_public = http_get(&public, path);
        assert!(
            on_public.starts_with("HTTP/1.1 404"),
            "public {path}: {on_public}"
        );
    }
    assert!(http_get(&admin, "/metrics").contains("callbridge_calls_active 0"));
    // SIGTERM (what Kubernetes sends): with no live call, it drains at once and exits 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_mistyped_variable_stops_serve_naming_the_closest_key() {
    let out = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_REALTIME__URLL", "ws://127.0.0.1:9/v1/realtime")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("CALLBRIDGE_REALTIME__URLL")
            && err.contains("did you mean CALLBRIDGE_REALTIME__URL?"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// What a fake HTTP server received: (request line and headers, body) each.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A one-thread HTTP/1.1 server on 127.0.0.1:0 answering every request with
/// `status` and `body`.
fn fake_http(status: u16, body: &'static str) -> (String, Received) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let mut reader = std::io::BufReader::new(tcp);
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body_in = vec![0u8; length];
            let _ = reader.read_exact(&mut body_in);
            record
                .lock()
                .unwrap()
                .push((head, String::from_utf8_lossy(&body_in).into_owned()));
            let mut tcp = reader.into_inner();
            let _ = write!(
                tcp,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

#[test]
fn dial_places_a_call_through_serve_and_the_twilio_rest_api() {
    const SID: &str = "CA0123456789abcdef0123456789abcdef";
    let (rest, rest_seen) = fake_http(201, r#"{"sid":"CA0123456789abcdef0123456789abcdef"}"#);
    let mut child = callbridge()
        .arg("serve")
        .env("CALLBRIDGE_LISTEN", "127.0.0.1:0")
        .env("CALLBRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com")
        .env("CALLBRIDGE_LOG__FORMAT", "json")
        .env("CALLBRIDGE_TWILIO__API_BASE_URL", format!("http://{rest}"))
        .env("CALLBRIDGE_OUTBOUND__ALLOWED_PREFIXES", "[\"+1\"]")
        .env("CALLBRIDGE_ADMIN_TOKEN", "admin-tok")
        .env("OPENAI_API_KEY", "sk-x")
        .env("TWILIO_AUTH_TOKEN", "t")
        .env("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let serving = serving_line(&mut child);
    let admin = format!("http://{}", serving["admin_listen"].as_str().unwrap());
    let dial = |token: Option<&str>, to: &str, extra: &[&str]| {
        let mut cmd = callbridge();
        cmd.args([
            "dial",
            "--bridge",
            &admin,
            "--to",
            to,
            "--from",
            "+14155550199",
        ])
        .args(extra);
        if let Some(token) = token {
            cmd.env("CALLBRIDGE_ADMIN_TOKEN", token);
        }
        cmd.output().unwrap()
    };

    let out = dial(
        Some("admin-tok"),
        "+14155550123",
        &["--context", r#"{"customer":"Zanzibar"}"#],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{SID}\n"));
    let seen = rest_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (head, form) = &seen[0];
    assert!(
        head.starts_with(
            "POST /2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Calls.json "
        ),
        "{head}"
    );
    let form: Vec<(String, String)> = url::form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("To"), Some("+14155550123"));
    let twiml = get("Twiml").unwrap();
    assert!(twiml.contains("wss://bridge.example.com/media"), "{twiml}");
    assert!(!twiml.contains("Zanzibar"), "{twiml}");
    assert_eq!(
        get("StatusCallback"),
        Some("https://bridge.example.com/call-status")
    );

    // Each refusal is one line on stderr and a failure exit.
    for (token, to, extra, want) in [
        (Some("wrong"), "+14155550123", &[][..], "401"),
        (None, "+14155550123", &[][..], "no admin token"),
        (Some("admin-tok"), "12345", &[][..], "400 bad_number"),
        (
            Some("admin-tok"),
            "+442071234567",
            &[][..],
            "400 disallowed_prefix",
        ),
        (
            Some("admin-tok"),
            "+14155550123",
            &["--context", "{oops"][..],
            "--context is not valid JSON",
        ),
        (
            Some("admin-tok"),
            "+14155550123",
            &["--profile", "nope"][..],
            "400 unknown_profile",
        ),
    ] {
        let out = dial(token, to, extra);
        let err = stderr(&out);
        assert!(!out.status.success(), "{to} {extra:?}");
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("admin-tok"), "{err}");
    }
    assert_eq!(rest_seen.lock().unwrap().len(), 1);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
}

/// Kills a child process when dropped, so a failing test leaves none behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dial_then_the_simulated_callee_talks_to_the_assistant() {
    use std::io::BufRead as _;
    const SID: &str = "CAfeedfacefeedfacefeedfacefeedface";
    // The model: the local echo peer, on a port of its choosing.
    let mut echo = Reaped(
        callbridge()
            .args(["echo-realtime", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    std::io::BufReader::new(echo.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let model_url = first
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();
    // Twilio's REST API, faked; the bridge's public port must be known to
    // be written into the TwiML, so it is picked first.
    let (rest, rest_seen) = fake_http(201, r#"{"sid":"CAfeedfacefeedfacefeedfacefeedface"}"#);
    let public = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut serve = Reaped(
        callbridge()
            .arg("serve")
            .env("CALLBRIDGE_LISTEN", public.to_string())
            .env("CALLBRIDGE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CALLBRIDGE_PUBLIC_URL", format!("http://{public}"))
            .env("CALLBRIDGE_LOG__FORMAT", "json")
            .env("CALLBRIDGE_REALTIME__URL", &model_url)
            .env("CALLBRIDGE_AUDIO__MODE", "pcmu")
            .env("CALLBRIDGE_TWILIO__API_BASE_URL", format!("http://{rest}"))
            .env("CALLBRIDGE_ADMIN_TOKEN", "admin-tok")
            .env("TWILIO_AUTH_TOKEN", "t")
            .env("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let serving = serving_line(&mut serve.0);
    let admin = format!("http://{}", serving["admin_listen"].as_str().unwrap());

    let out = callbridge()
        .args(["dial", "--bridge", &admin])
        .args(["--to", "+14155550123", "--from", "+14155550199"])
        .env("CALLBRIDGE_ADMIN_TOKEN", "admin-tok")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SID);
    let twiml = {
        let seen = rest_seen.lock().unwrap();
        let (_, form) = &seen[0];
        url::form_urlencoded::parse(form.as_bytes())
            .find(|(k, _)| k == "Twiml")
            .map(|(_, v)| v.into_owned())
            .expect("Calls.json carries the TwiML")
    };
    let dir = tempfile::tempdir().unwrap();
    let twiml_file = dir.path().join("call.xml");
    std::fs::write(&twiml_file, &twiml).unwrap();
    let heard = dir.path().join("heard.wav");

    // Twilio connects the callee as that TwiML says; the callee speaks.
    let out = callbridge()
        .args(["call", "--bridge", &format!("http://{public}")])
        .arg("--twiml")
        .arg(&twiml_file)
        .args(["--call-sid", SID, "--max-duration", "30"])
        .arg("--audio")
        .arg(fixture("speech.ulaw"))
        .arg("--out")
        .arg(&heard)
        .env("TWILIO_AUTH_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    // The echo peer spoke the callee's words back: loud audio was heard.
    let mut wav = hound::WavReader::open(&heard).unwrap();
    let loud = wav
        .samples::<i16>()
        .filter(|s| s.as_ref().is_ok_and(|s| s.unsigned_abs() > 2000))
        .count();
    assert!(loud > 2000, "only {loud} loud samples heard (8 kHz)");
}
