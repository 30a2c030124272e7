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
