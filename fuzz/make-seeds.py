#!/usr/bin/env python3
"""Writes the fuzz seeds that come from fixtures/ (real speech in media
payloads, model audio deltas and transcode inputs) and the ones computed
(stream tokens valid for the stream_token target's key). The other seeds in
fuzz/seeds/ are hand-written. Run from the repository root; standard library
only. scripts/fuzz copies fuzz/seeds/<target>/ into a fresh corpus per run."""
import base64
import hashlib
import hmac
import json
import os
import sys
import wave

OUT = sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds"
SID = "MZ0123456789abcdef0123456789abcdef"
CALL = "CA0123456789abcdef0123456789abcdef"


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def js(obj):
    return json.dumps(obj, separators=(",", ":"))


def b64(data):
    return base64.b64encode(data).decode()


def token(key, call_sid, profile, expiry):
    """src/twilio/token.rs: HMAC-SHA1 over the version and length-prefixed fields."""
    mac = hmac.new(key, b"v2", hashlib.sha1)
    for field in (call_sid, profile, expiry):
        mac.update(f"|{len(field)}:{field}".encode())
    tag = base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")
    return f"v2.{expiry}.{profile}.{tag}"


speech = open("fixtures/speech.ulaw", "rb").read()
barge = open("fixtures/bargein.ulaw", "rb").read()
with wave.open("fixtures/speech-24k.wav") as w:
    w.setpos(w.getnframes() // 2)
    pcm24 = w.readframes(480)  # 20 ms of speech, PCM16 24 kHz
frame = speech[len(speech) // 2 :][:160]  # 20 ms of speech, μ-law
bframe = barge[len(barge) // 2 :][:160]

put("twilio_inbound", "media_speech.json", js({"event": "media", "sequenceNumber": "3", "streamSid": SID,
    "media": {"track": "inbound", "chunk": "2", "timestamp": "20", "payload": b64(frame)}}))
put("twilio_outbound", "media.json", js({"event": "media", "streamSid": SID, "media": {"payload": b64(bframe)}}))
put("model_event", "rt_delta_speech.json", js({"type": "response.output_audio.delta", "event_id": "e",
    "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": b64(pcm24)}))
put("model_event", "beta_delta.json", js({"type": "response.audio.delta", "event_id": "e",
    "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": b64(frame)}))

# The target verifies at t = 1000 s with key "fuzz-key"; "token\nCallSid".
put("stream_token", "valid.txt", token(b"fuzz-key", CALL, "default", "1060") + "\n" + CALL)
put("stream_token", "valid_sales.txt", token(b"fuzz-key", "CA0", "sales", "1000"))
put("stream_token", "expired.txt", token(b"fuzz-key", CALL, "default", "999") + "\n" + CALL)
put("stream_token", "other_call.txt", token(b"fuzz-key", CALL, "default", "1060") + "\nCA1")

# transcode: the first byte is where the rest is split in two.
put("transcode", "ulaw_speech.bin", bytes([80]) + frame)
put("transcode", "pcm16_speech.bin", bytes([100]) + pcm24)
put("transcode", "pcm16_odd.bin", bytes([7]) + pcm24[:161])
put("transcode", "bargein.bin", bytes([255]) + bframe + bframe)
