#!/usr/bin/env python3
"""Signature test vectors for callbridge, made by Twilio's official SDK.

callbridge checks X-Twilio-Signature in Rust (src/twilio/signature.rs). To be
sure it signs exactly like Twilio, the vectors in
fixtures/twilio-signatures.json are computed here by the official `twilio`
package's RequestValidator, and a Rust unit test checks every one of them.

    python3 conformance/twilio_signatures.py --write   # regenerate the fixture
    python3 conformance/twilio_signatures.py --check   # CI: fail if it is stale

Every vector is also run through RequestValidator.validate (and must fail
under a wrong token), so a vector the SDK itself would reject never lands in
the fixture. Requires `pip install twilio`.
"""

import argparse
import json
import sys
from pathlib import Path

from twilio.request_validator import RequestValidator

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "twilio-signatures.json"

# Fixed, fake secrets: the output must be deterministic.
TOKEN = "0123456789abcdef0123456789abcdef"
DOCS_TOKEN = "12345"  # the token of twilio-python's own tests

ACCOUNT = "AC" + "0" * 31 + "1"
CALL = "CA" + "f" * 31 + "e"


class Pairs:
    """A multi-valued form, as Flask's MultiDict or Django's QueryDict look to
    RequestValidator: iterating yields names, getall() a name's values."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def __iter__(self):
        return iter([name for name, _ in self.pairs])

    def __len__(self):
        return len(self.pairs)

    def getall(self, name):
        return [value for n, value in self.pairs if n == name]


def voice_webhook():
    """A realistic inbound-call webhook body (Twilio sends empty fields too)."""
    return [
        ("AccountSid", ACCOUNT),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", CALL),
        ("CallStatus", "ringing"),
        ("CallToken", '%7B%22parentCallInfoToken%22%3A%22eyJhbGciOiJFUzI1NiJ9%22%7D'),
        ("Called", "+15005550006"),
        ("CalledCity", ""),
        ("CalledCountry", "US"),
        ("CalledState", "CA"),
        ("CalledZip", ""),
        ("Caller", "+14158675309"),
        ("CallerCity", "SAN FRANCISCO"),
        ("CallerCountry", "US"),
        ("CallerName", "Zoë Ångström"),
        ("CallerState", "CA"),
        ("CallerZip", "94105"),
        ("Direction", "inbound"),
        ("From", "+14158675309"),
        ("FromCity", "SAN FRANCISCO"),
        ("FromCountry", "US"),
        ("FromState", "CA"),
        ("FromZip", "94105"),
        ("StirVerstat", "TN-Validation-Passed-A"),
        ("To", "+15005550006"),
        ("ToCity", ""),
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("ToZip", ""),
    ]


def cases():
    """(name, token, url, params) where params is a list of (name, value);
    repeated names are passed to the SDK as a multi-valued form."""
    docs_form = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
    docs_query = "/myapp.php?foo=1&bar=2"
    yield "docs: https, no port", DOCS_TOKEN, "https://mycompany.com" + docs_query, docs_form
    yield "docs: https :443", DOCS_TOKEN, "https://mycompany.com:443" + docs_query, docs_form
    yield "docs: http :80", DOCS_TOKEN, "http://mycompany.com:80" + docs_query, docs_form
    yield "docs: http :1234", DOCS_TOKEN, "http://mycompany.com:1234" + docs_query, docs_form

    yield "voice webhook", TOKEN, "https://bridge.example.com/voice", voice_webhook()
    yield "voice webhook, non-default port", TOKEN, "https://bridge.example.com:8443/voice", voice_webhook()
    yield "voice webhook, query string", TOKEN, "https://bridge.example.com/voice?tenant=a%20b&x=1", voice_webhook()
    yield "voice webhook, path prefix and trailing slash", TOKEN, "https://example.com/callbridge/voice/", voice_webhook()
    yield "stream status callback", TOKEN, "https://bridge.example.com/stream-status", [
        ("AccountSid", ACCOUNT),
        ("CallSid", CALL),
        ("StreamError", ""),
        ("StreamEvent", "stream-started"),
        ("StreamName", "MZ" + "a" * 32),
        ("StreamSid", "MZ" + "a" * 32),
        ("Timestamp", "2025-01-01T00:00:00.000Z"),
    ]
    yield "media upgrade (GET, no params)", TOKEN, "wss://bridge.example.com/media", []
    yield "media upgrade, :443", TOKEN, "wss://bridge.example.com:443/media", []
    yield "media upgrade, ws loopback port", TOKEN, "ws://127.0.0.1:8080/media", []
    yield "http, no params", TOKEN, "http://localhost/voice", []
    yield "spaces, plus, unicode, empty values", TOKEN, "https://bridge.example.com/voice", [
        ("SpeechResult", "I'd like to talk to a human, please."),
        ("Digits", ""),
        ("From", "+44 20 7946 0958"),
        ("Note", "naïve café — 日本語 😀"),
        ("Symbols", "a+b=c&d%20e/f?g#h"),
    ]
    yield "sorted by (name, value), not by name+value", TOKEN, "https://h.example/voice", [
        ("ab", ""),
        ("a", "z"),
        ("B", "upper case sorts first"),
    ]
    yield "code point order, not UTF-16", TOKEN, "https://h.example/voice", [
        ("k", "\uff01"),
        ("k", "\U0001F600"),
        ("\U0001F600", "astral name"),
        ("\uff01", "bmp name"),
    ]
    yield "repeated names", TOKEN, "https://bridge.example.com/voice", [
        ("To", "+15005550006"),
        ("Tag", "b"),
        ("Tag", "a"),
        ("Tag", "c"),
    ]
    yield "repeated identical pair is signed once", TOKEN, "https://bridge.example.com/voice", [
        ("Tag", "a"),
        ("Tag", "a"),
        ("Tag", "0"),
    ]
    yield "unicode token", "tøken with spaces", "https://bridge.example.com/voice", [("CallSid", CALL)]


# PROTOCOLS.md §1.2 (from twilio-python's own tests): the SDK must still agree.
KNOWN = {
    "https://mycompany.com/myapp.php?foo=1&bar=2": "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
    "https://mycompany.com:443/myapp.php?foo=1&bar=2": "kvajT1Ptam85bY51eRf/AJRuM3w=",
    "http://mycompany.com:80/myapp.php?foo=1&bar=2": "0ZXoZLH/DfblKGATFgpif+LLRf4=",
    "http://mycompany.com:1234/myapp.php?foo=1&bar=2": "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
}


def sdk_params(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        return Pairs(pairs)
    return dict(pairs)


def build():
    vectors = []
    for name, token, url, pairs in cases():
        params = sdk_params(pairs)
        validator = RequestValidator(token)
        signature = validator.compute_signature(url, params)
        if token == DOCS_TOKEN and KNOWN[url] != signature:
            raise SystemExit(f"SDK disagrees with PROTOCOLS.md: {name}")
        if not validator.validate(url, params, signature):
            raise SystemExit(f"SDK rejects its own signature: {name}")
        if RequestValidator(token + "x").validate(url, params, signature):
            raise SystemExit(f"SDK accepts a wrong token: {name}")
        vectors.append(
            {
                "name": name,
                "token": token,
                "url": url,
                "params": [[n, v] for n, v in pairs],
                "signature": signature,
            }
        )
    return json.dumps(vectors, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"write {FIXTURE.name}")
    mode.add_argument("--check", action="store_true", help="exit 1 if the fixture is stale")
    args = parser.parse_args()

    text = build()
    if args.write:
        FIXTURE.write_text(text, encoding="utf-8")
        print(f"wrote {FIXTURE}")
        return 0
    try:
        committed = FIXTURE.read_text(encoding="utf-8")
    except FileNotFoundError:
        committed = None
    if committed != text:
        print(
            f"{FIXTURE} is missing or stale; run: python3 conformance/twilio_signatures.py --write",
            file=sys.stderr,
        )
        return 1
    print(f"{FIXTURE.name}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
