//! Media Streams messages: the JSON text frames of a Twilio bidirectional
//! stream (PROTOCOLS.md §1.3), in both directions.
//!
//! The bridge parses [`Inbound`] frames (about 50 a second per call) and writes
//! the outbound ones ([`write_media`], [`write_mark`], [`write_clear`]). The
//! simulated caller does the reverse: it writes what Twilio sends
//! ([`write_connected`], [`write_start`], …) and parses what the bridge sends
//! ([`Outbound`]). Keeping both directions here keeps the simulator honest: it
//! speaks exactly the shapes the bridge is tested against.
//!
//! Parsing borrows from the frame: strings without escapes (SIDs, base64
//! payloads) are `Cow::Borrowed`, so a media frame costs no string copies.
//! Writing goes into a caller-provided `String`, reused across frames, with no
//! intermediate `serde_json::Value`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Why a frame could not be used. The bridge drops the frame in both cases but
/// counts them apart: `UnknownEvent` is Twilio adding something new (harmless,
/// worth noticing), `Malformed` is a broken or hostile peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON, not an object, no string `event`, or a known event with
    /// missing fields or fields of the wrong type. Holds the parser's message
    /// (shortened: it may quote the input).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A JSON object whose `event` we do not know (shortened).
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
}

/// Longest error detail kept: serde messages can quote attacker-sized input.
const MAX_ERROR_DETAIL: usize = 160;

// ---------------------------------------------------------------------------
// Twilio → bridge
// ---------------------------------------------------------------------------

/// A frame Twilio sends on the stream.
///
/// Lenient where Twilio's docs are loose: unknown fields are ignored,
/// `sequenceNumber`, `chunk` and `timestamp` (documented as JSON strings) are
/// also accepted as numbers, and only the fields the bridge acts on are
/// required. The `streamSid` of every event but `start` is optional: the
/// bridge learns it from `start` and does not need it repeated to relay audio.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Inbound<'a> {
    /// The first frame: the socket is open, `start` follows.
    Connected {
        #[serde(default, borrow, deserialize_with = "opt_str")]
        protocol: Option<Cow<'a, str>>,
        #[serde(default, borrow, deserialize_with = "opt_str")]
        version: Option<Cow<'a, str>>,
    },
    /// Stream metadata, including our `customParameters` (the call token).
    Start {
        #[serde(
            rename = "sequenceNumber",
            default,
            borrow,
            deserialize_with = "opt_str_or_number"
        )]
        sequence_number: Option<Cow<'a, str>>,
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
        #[serde(borrow)]
        start: Start<'a>,
    },
    /// Caller audio.
    Media {
        #[serde(
            rename = "sequenceNumber",
            default,
            borrow,
            deserialize_with = "opt_str_or_number"
        )]
        sequence_number: Option<Cow<'a, str>>,
        #[serde(rename = "streamSid", default, borrow, deserialize_with = "opt_str")]
        stream_sid: Option<Cow<'a, str>>,
        #[serde(borrow)]
        media: Media<'a>,
    },
    /// A key press.
    Dtmf {
        #[serde(
            rename = "sequenceNumber",
            default,
            borrow,
            deserialize_with = "opt_str_or_number"
        )]
        sequence_number: Option<Cow<'a, str>>,
        #[serde(rename = "streamSid", default, borrow, deserialize_with = "opt_str")]
        stream_sid: Option<Cow<'a, str>>,
        #[serde(borrow)]
        dtmf: Dtmf<'a>,
    },
    /// The echo of a mark we sent: the audio before it has played (or was cleared).
    Mark {
        #[serde(
            rename = "sequenceNumber",
            default,
            borrow,
            deserialize_with = "opt_str_or_number"
        )]
        sequence_number: Option<Cow<'a, str>>,
        #[serde(rename = "streamSid", default, borrow, deserialize_with = "opt_str")]
        stream_sid: Option<Cow<'a, str>>,
        #[serde(borrow)]
        mark: MarkBody<'a>,
    },
    /// The call ended or the stream was stopped; no more frames follow.
    Stop {
        #[serde(
            rename = "sequenceNumber",
            default,
            borrow,
            deserialize_with = "opt_str_or_number"
        )]
        sequence_number: Option<Cow<'a, str>>,
        #[serde(rename = "streamSid", default, borrow, deserialize_with = "opt_str")]
        stream_sid: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        stop: Option<Stop<'a>>,
    },
}

/// The `event` names of [`Inbound`], to tell an unknown event from a broken one.
const INBOUND_EVENTS: [&str; 6] = ["connected", "start", "media", "dtmf", "mark", "stop"];

impl Inbound<'_> {
    /// The `event` name, for logs and metric labels.
    pub fn event(&self) -> &'static str {
        match self {
            Inbound::Connected { .. } => "connected",
            Inbound::Start { .. } => "start",
            Inbound::Media { .. } => "media",
            Inbound::Dtmf { .. } => "dtmf",
            Inbound::Mark { .. } => "mark",
            Inbound::Stop { .. } => "stop",
        }
    }

    /// `sequenceNumber` as a number: it counts every frame from `start` on, so
    /// a gap means Twilio lost frames. `None` for `connected`, or if absent or
    /// not a decimal number.
    pub fn sequence_number(&self) -> Option<u64> {
        match self {
            Inbound::Connected { .. } => None,
            Inbound::Start {
                sequence_number, ..
            }
            | Inbound::Media {
                sequence_number, ..
            }
            | Inbound::Dtmf {
                sequence_number, ..
            }
            | Inbound::Mark {
                sequence_number, ..
            }
            | Inbound::Stop {
                sequence_number, ..
            } => parse_u64(sequence_number.as_deref()),
        }
    }
}

/// The `start` object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start<'a> {
    #[serde(borrow)]
    pub account_sid: Cow<'a, str>,
    #[serde(borrow)]
    pub stream_sid: Cow<'a, str>,
    /// Checked against the stream token, which was issued for this call.
    #[serde(borrow)]
    pub call_sid: Cow<'a, str>,
    /// `["inbound"]` for `<Connect><Stream>`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tracks: Vec<String>,
    #[serde(borrow)]
    pub media_format: MediaFormat<'a>,
    /// The `<Parameter>`s of our TwiML, e.g. `token`. Absent or `null` means none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub custom_parameters: HashMap<String, String>,
}

impl Start<'_> {
    /// One of our `<Parameter>` values, e.g. `custom_parameter("token")`.
    pub fn custom_parameter(&self, name: &str) -> Option<&str> {
        self.custom_parameters.get(name).map(String::as_str)
    }
}

/// `start.mediaFormat`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat<'a> {
    #[serde(borrow)]
    pub encoding: Cow<'a, str>,
    pub sample_rate: u32,
    pub channels: u16,
}

impl MediaFormat<'_> {
    /// Whether this is what the audio path expects: G.711 μ-law, 8 kHz, mono.
    /// Anything else must end the call (1008) rather than be played as noise.
    /// The MIME type compares case-insensitively, as MIME types do.
    pub fn is_twilio_mulaw(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("audio/x-mulaw")
            && self.sample_rate == 8000
            && self.channels == 1
    }
}

/// `media` of an inbound frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Media<'a> {
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub track: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_str_or_number")]
    pub chunk: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_str_or_number")]
    pub timestamp: Option<Cow<'a, str>>,
    /// Base64 μ-law; any length (the 160-byte frame size is not promised).
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

impl Media<'_> {
    /// `timestamp`: milliseconds since the stream started, by Twilio's clock.
    pub fn timestamp_ms(&self) -> Option<u64> {
        parse_u64(self.timestamp.as_deref())
    }

    /// `chunk`: the frame's number in the track, from 1.
    pub fn chunk_number(&self) -> Option<u64> {
        parse_u64(self.chunk.as_deref())
    }
}

/// `dtmf` of a key-press frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Dtmf<'a> {
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub track: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub digit: Cow<'a, str>,
}

/// `mark`, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MarkBody<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `stop` of the last frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stop<'a> {
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub account_sid: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_str")]
    pub call_sid: Option<Cow<'a, str>>,
}

/// Parses one text frame from Twilio.
///
/// The two events of every call-second (`media` in, `mark` echoes) take a
/// flat path; everything else, and anything the flat path does not accept,
/// goes through [`Inbound`]'s own (internally tagged) deserializer, whose
/// outcome is therefore the outcome for every frame.
pub fn parse_inbound(text: &str) -> Result<Inbound<'_>, MessageError> {
    if let Some(hot) = parse_hot(text) {
        return Ok(hot);
    }
    serde_json::from_str(text).map_err(|e| classify(text, &INBOUND_EVENTS, &e))
}

/// The fields of `media` and `mark` frames, side by side in one struct.
///
/// serde reads an internally tagged enum by first buffering the whole object
/// into a tree of its own (to find the tag), then deserializing the variant
/// from that tree: most of a media frame's parsing cost. This struct is read
/// in one pass. It takes the same field deserializers as the variants, so
/// whenever it yields a frame, [`Inbound`]'s deserializer yields the same one;
/// anything else (another event, a missing or mistyped field, a field of the
/// other event that does not parse, a duplicate) returns `None`, and the frame
/// is parsed again the general way, with its usual outcome.
#[derive(Deserialize)]
struct Hot<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(
        rename = "sequenceNumber",
        default,
        borrow,
        deserialize_with = "opt_str_or_number"
    )]
    sequence_number: Option<Cow<'a, str>>,
    #[serde(rename = "streamSid", default, borrow, deserialize_with = "opt_str")]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    media: Option<Media<'a>>,
    #[serde(default, borrow)]
    mark: Option<MarkBody<'a>>,
}

fn parse_hot(text: &str) -> Option<Inbound<'_>> {
    let hot: Hot<'_> = serde_json::from_str(text).ok()?;
    match (hot.event.as_ref(), hot.media, hot.mark) {
        ("media", Some(media), _) => Some(Inbound::Media {
            sequence_number: hot.sequence_number,
            stream_sid: hot.stream_sid,
            media,
        }),
        ("mark", _, Some(mark)) => Some(Inbound::Mark {
            sequence_number: hot.sequence_number,
            stream_sid: hot.stream_sid,
            mark,
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Bridge → Twilio
// ---------------------------------------------------------------------------

/// A frame the bridge sends; parsed by the simulated caller. Strict about
/// `streamSid`, since the simulator exists to catch the bridge getting it wrong.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Outbound<'a> {
    /// Audio to play, queued after what was sent before.
    Media {
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
        #[serde(borrow)]
        media: OutboundMedia<'a>,
    },
    /// Echo `name` back once everything queued before it has played.
    Mark {
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
        #[serde(borrow)]
        mark: MarkBody<'a>,
    },
    /// Drop everything queued (barge-in); pending marks are echoed at once.
    Clear {
        #[serde(rename = "streamSid", borrow)]
        stream_sid: Cow<'a, str>,
    },
}

/// The `event` names of [`Outbound`].
const OUTBOUND_EVENTS: [&str; 3] = ["media", "mark", "clear"];

/// `media` of an outbound frame: only the payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OutboundMedia<'a> {
    /// Base64 raw μ-law 8 kHz, no header.
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
}

/// Parses one text frame from the bridge (simulated-caller side).
pub fn parse_outbound(text: &str) -> Result<Outbound<'_>, MessageError> {
    serde_json::from_str(text).map_err(|e| classify(text, &OUTBOUND_EVENTS, &e))
}

/// `{"event":"media","streamSid":"…","media":{"payload":"…"}}` into `out`
/// (cleared first).
pub fn write_media(out: &mut String, stream_sid: &str, payload_b64: &str) {
    begin(out, "media", stream_sid, payload_b64.len() + 32);
    out.push_str(",\"media\":{\"payload\":");
    push_json_str(out, payload_b64);
    out.push_str("}}");
}

/// `{"event":"mark","streamSid":"…","mark":{"name":"…"}}` into `out`.
pub fn write_mark(out: &mut String, stream_sid: &str, name: &str) {
    begin(out, "mark", stream_sid, name.len() + 24);
    push_mark_body(out, name);
}

/// `{"event":"clear","streamSid":"…"}` into `out`.
pub fn write_clear(out: &mut String, stream_sid: &str) {
    begin(out, "clear", stream_sid, 1);
    out.push('}');
}

// ---------------------------------------------------------------------------
// Twilio → bridge, written (simulated caller)
// ---------------------------------------------------------------------------

/// `{"event":"connected","protocol":"Call","version":"1.0.0"}` into `out`.
pub fn write_connected(out: &mut String) {
    out.clear();
    out.push_str(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#);
}

/// The `start` frame, `sequenceNumber` 1, with the media format Twilio uses
/// (`audio/x-mulaw`, 8000 Hz, mono, inbound track) and `custom_parameters`
/// in the order given.
pub fn write_start(
    out: &mut String,
    stream_sid: &str,
    call_sid: &str,
    account_sid: &str,
    custom_parameters: &[(&str, &str)],
) {
    let params_len: usize = custom_parameters
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    out.clear();
    out.reserve(256 + 2 * stream_sid.len() + call_sid.len() + account_sid.len() + params_len);
    out.push_str(r#"{"event":"start","sequenceNumber":"1","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","start":{"accountSid":"#);
    push_json_str(out, account_sid);
    out.push_str(r#","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","callSid":"#);
    push_json_str(out, call_sid);
    out.push_str(r#","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"#);
    for (i, (name, value)) in custom_parameters.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, name);
        out.push(':');
        push_json_str(out, value);
    }
    out.push_str("}}}");
}

/// A caller-audio frame: `{"event":"media","sequenceNumber":"…","streamSid":"…",
/// "media":{"track":"inbound","chunk":"…","timestamp":"…","payload":"…"}}`.
pub fn write_inbound_media(
    out: &mut String,
    stream_sid: &str,
    seq: u64,
    chunk: u64,
    timestamp_ms: u64,
    payload_b64: &str,
) {
    begin_numbered(out, "media", seq, stream_sid, payload_b64.len() + 96);
    out.push_str(r#","media":{"track":"inbound","chunk":""#);
    push_u64(out, chunk);
    out.push_str(r#"","timestamp":""#);
    push_u64(out, timestamp_ms);
    out.push_str(r#"","payload":"#);
    push_json_str(out, payload_b64);
    out.push_str("}}");
}

/// The echo of a mark: `{"event":"mark","sequenceNumber":"…","streamSid":"…","mark":{"name":"…"}}`.
pub fn write_inbound_mark(out: &mut String, stream_sid: &str, seq: u64, name: &str) {
    begin_numbered(out, "mark", seq, stream_sid, name.len() + 24);
    push_mark_body(out, name);
}

/// A key press: `{"event":"dtmf","sequenceNumber":"…","streamSid":"…","dtmf":{"track":"inbound_track","digit":"…"}}`.
pub fn write_dtmf(out: &mut String, stream_sid: &str, seq: u64, digit: &str) {
    begin_numbered(out, "dtmf", seq, stream_sid, digit.len() + 48);
    out.push_str(r#","dtmf":{"track":"inbound_track","digit":"#);
    push_json_str(out, digit);
    out.push_str("}}");
}

/// The last frame: `{"event":"stop","sequenceNumber":"…","streamSid":"…","stop":{"accountSid":"…","callSid":"…"}}`.
pub fn write_stop(out: &mut String, stream_sid: &str, seq: u64, call_sid: &str, account_sid: &str) {
    begin_numbered(
        out,
        "stop",
        seq,
        stream_sid,
        call_sid.len() + account_sid.len() + 40,
    );
    out.push_str(r#","stop":{"accountSid":"#);
    push_json_str(out, account_sid);
    out.push_str(r#","callSid":"#);
    push_json_str(out, call_sid);
    out.push_str("}}");
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Clears `out`, reserves room, and writes `{"event":"<event>","streamSid":"…"`.
fn begin(out: &mut String, event: &str, stream_sid: &str, extra: usize) {
    out.clear();
    out.reserve(32 + event.len() + stream_sid.len() + extra);
    out.push_str(r#"{"event":""#);
    out.push_str(event);
    out.push_str(r#"","streamSid":"#);
    push_json_str(out, stream_sid);
}

/// Like [`begin`], with `"sequenceNumber":"<seq>"` before `streamSid`, as Twilio orders them.
fn begin_numbered(out: &mut String, event: &str, seq: u64, stream_sid: &str, extra: usize) {
    out.clear();
    out.reserve(56 + event.len() + stream_sid.len() + extra);
    out.push_str(r#"{"event":""#);
    out.push_str(event);
    out.push_str(r#"","sequenceNumber":""#);
    push_u64(out, seq);
    out.push_str(r#"","streamSid":"#);
    push_json_str(out, stream_sid);
}

fn push_mark_body(out: &mut String, name: &str) {
    out.push_str(r#","mark":{"name":"#);
    push_json_str(out, name);
    out.push_str("}}");
}

fn push_u64(out: &mut String, n: u64) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

/// Appends `s` as a JSON string literal, escaped exactly as serde_json does
/// (`"`, `\`, and control characters; `/` and non-ASCII left as they are).
/// Base64 and SIDs need no escaping, so the common case is one copy.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    // A branch-free scan (it vectorises: ~4x faster than the loop below on a
    // 216-char payload), then one copy in the usual case.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        start = i + 1;
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn parse_u64(s: Option<&str>) -> Option<u64> {
    s.and_then(|s| s.parse().ok())
}

/// Turns a parse failure into [`MessageError`]: if the text is an object
/// whose `event` is a string we do not know, it is `UnknownEvent`, else
/// `Malformed`. This second parse happens only on the error path.
fn classify(text: &str, known: &[&str], err: &serde_json::Error) -> MessageError {
    #[derive(Deserialize)]
    struct EventOnly<'a> {
        #[serde(borrow)]
        event: Cow<'a, str>,
    }
    match serde_json::from_str::<EventOnly<'_>>(text) {
        Ok(EventOnly { event }) if !known.contains(&event.as_ref()) => {
            MessageError::UnknownEvent(shorten(&event, 64))
        }
        _ => MessageError::Malformed(shorten(&err.to_string(), MAX_ERROR_DETAIL)),
    }
}

/// At most `max` bytes of `s`, cut at a char boundary, with `…` if cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `deserialize_with` for an optional string that borrows from the input when
/// it can. Needed because serde's `#[serde(borrow)]` only borrows a bare
/// `Cow<str>`; inside `Option` it would always allocate.
fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    d.deserialize_option(OptionalStr { numbers: false })
}

/// Like [`opt_str`], also accepting a non-negative integer (kept as its
/// decimal text), for the counters Twilio documents as strings.
fn opt_str_or_number<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    d.deserialize_option(OptionalStr { numbers: true })
}

/// `null` (or absent, with `#[serde(default)]`) as the type's default.
fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

struct OptionalStr {
    numbers: bool,
}

impl<'de> Visitor<'de> for OptionalStr {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.numbers {
            "a string, a number or null"
        } else {
            "a string or null"
        })
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(StrOrNumber {
            numbers: self.numbers,
        })
        .map(Some)
    }
}

struct StrOrNumber {
    numbers: bool,
}

impl<'de> Visitor<'de> for StrOrNumber {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.numbers {
            "a string or a number"
        } else {
            "a string"
        })
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        if self.numbers {
            Ok(Cow::Owned(v.to_string()))
        } else {
            Err(E::invalid_type(de::Unexpected::Unsigned(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";
    const CALL: &str = "CA0123456789abcdef0123456789abcdef";
    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

    #[allow(clippy::ptr_arg, reason = "it inspects the Cow, not the string")]
    fn is_borrowed(c: &Cow<'_, str>) -> bool {
        matches!(c, Cow::Borrowed(_))
    }

    /// The samples of PROTOCOLS.md §1.3, with real-looking SIDs.
    #[test]
    fn protocol_samples() {
        let connected =
            parse_inbound(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#).unwrap();
        assert_eq!(
            connected,
            Inbound::Connected {
                protocol: Some("Call".into()),
                version: Some("1.0.0".into())
            }
        );
        assert_eq!(connected.sequence_number(), None);

        let start = format!(
            r#"{{"event":"start","sequenceNumber":"1","streamSid":"{STREAM}",
 "start":{{"accountSid":"{ACCOUNT}","streamSid":"{STREAM}","callSid":"{CALL}","tracks":["inbound"],
          "mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},
          "customParameters":{{"token":"v1.1.abc"}}}}}}"#
        );
        let Inbound::Start {
            sequence_number,
            stream_sid,
            start,
        } = parse_inbound(&start).unwrap()
        else {
            panic!("not start")
        };
        assert_eq!(sequence_number.as_deref(), Some("1"));
        assert_eq!(stream_sid, STREAM);
        assert!(is_borrowed(&stream_sid) && is_borrowed(&start.call_sid));
        assert_eq!(start.account_sid, ACCOUNT);
        assert_eq!(start.stream_sid, STREAM);
        assert_eq!(start.call_sid, CALL);
        assert_eq!(start.tracks, ["inbound"]);
        assert!(start.media_format.is_twilio_mulaw());
        assert_eq!(start.custom_parameter("token"), Some("v1.1.abc"));
        assert_eq!(start.custom_parameter("other"), None);

        let media = format!(
            r#"{{"event":"media","sequenceNumber":"2","streamSid":"{STREAM}",
 "media":{{"track":"inbound","chunk":"1","timestamp":"0","payload":"//7+/w=="}}}}"#
        );
        let parsed = parse_inbound(&media).unwrap();
        assert_eq!(parsed.sequence_number(), Some(2));
        let Inbound::Media {
            stream_sid, media, ..
        } = parsed
        else {
            panic!("not media")
        };
        assert_eq!(stream_sid.as_deref(), Some(STREAM));
        assert_eq!(media.track.as_deref(), Some("inbound"));
        assert_eq!(media.chunk_number(), Some(1));
        assert_eq!(media.timestamp_ms(), Some(0));
        assert_eq!(media.payload, "//7+/w==");
        assert!(is_borrowed(&media.payload), "payload must not be copied");
        assert!(media.track.as_ref().is_some_and(is_borrowed));

        let dtmf = format!(
            r#"{{"event":"dtmf","sequenceNumber":"9","streamSid":"{STREAM}","dtmf":{{"track":"inbound_track","digit":"1"}}}}"#
        );
        let Inbound::Dtmf {
            dtmf,
            sequence_number,
            ..
        } = parse_inbound(&dtmf).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (dtmf.digit.as_ref(), dtmf.track.as_deref()),
            ("1", Some("inbound_track"))
        );
        assert_eq!(sequence_number.as_deref(), Some("9"));

        let mark = format!(
            r#"{{"event":"mark","sequenceNumber":"10","streamSid":"{STREAM}","mark":{{"name":"g1:item_1:480"}}}}"#
        );
        let Inbound::Mark { mark, .. } = parse_inbound(&mark).unwrap() else {
            panic!()
        };
        assert_eq!(mark.name, "g1:item_1:480");

        let stop = format!(
            r#"{{"event":"stop","sequenceNumber":"11","streamSid":"{STREAM}","stop":{{"accountSid":"{ACCOUNT}","callSid":"{CALL}"}}}}"#
        );
        let parsed = parse_inbound(&stop).unwrap();
        assert_eq!(parsed.event(), "stop");
        assert_eq!(parsed.sequence_number(), Some(11));
        let Inbound::Stop {
            stop: Some(stop), ..
        } = parsed
        else {
            panic!()
        };
        assert_eq!(stop.call_sid.as_deref(), Some(CALL));
        assert_eq!(stop.account_sid.as_deref(), Some(ACCOUNT));
    }

    #[test]
    fn outbound_samples() {
        let media =
            parse_outbound(r#"{"event":"media","streamSid":"MZ1","media":{"payload":"AAA="}}"#)
                .unwrap();
        let Outbound::Media { stream_sid, media } = media else {
            panic!()
        };
        assert_eq!(
            (stream_sid.as_ref(), media.payload.as_ref()),
            ("MZ1", "AAA=")
        );
        assert!(is_borrowed(&media.payload));
        assert_eq!(
            parse_outbound(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m"}}"#).unwrap(),
            Outbound::Mark {
                stream_sid: "MZ1".into(),
                mark: MarkBody { name: "m".into() }
            }
        );
        assert_eq!(
            parse_outbound(r#"{"event":"clear","streamSid":"MZ1"}"#).unwrap(),
            Outbound::Clear {
                stream_sid: "MZ1".into()
            }
        );
    }

    #[test]
    fn escaped_slashes_in_payload() {
        let text = r#"{"event":"media","streamSid":"MZ1","media":{"payload":"\/\/7+\/w=="}}"#;
        let Inbound::Media { media, .. } = parse_inbound(text).unwrap() else {
            panic!()
        };
        assert_eq!(media.payload, "//7+/w==");
        assert!(!is_borrowed(&media.payload));
        let Outbound::Media { media, .. } = parse_outbound(text).unwrap() else {
            panic!()
        };
        assert_eq!(media.payload, "//7+/w==");
        // Escapes inside optional fields too.
        let text = r#"{"event":"media","streamSid":"M\u005a1","media":{"track":"in\/bound","payload":""}}"#;
        let Inbound::Media {
            stream_sid, media, ..
        } = parse_inbound(text).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (stream_sid.as_deref(), media.track.as_deref()),
            (Some("MZ1"), Some("in/bound"))
        );
    }

    #[test]
    fn lenient_where_twilio_is_loose() {
        // Numbers for the string counters, extra fields, nulls, no streamSid.
        let text = r#"{"event":"media","sequenceNumber":7,"extra":{"a":[1,2]},"media":{"track":null,
            "chunk":3,"timestamp":140,"payload":"AA==","new":"x"}}"#;
        let parsed = parse_inbound(text).unwrap();
        assert_eq!(parsed.sequence_number(), Some(7));
        let Inbound::Media {
            stream_sid, media, ..
        } = parsed
        else {
            panic!()
        };
        assert_eq!(stream_sid, None);
        assert_eq!(media.track, None);
        assert_eq!(
            (media.chunk_number(), media.timestamp_ms()),
            (Some(3), Some(140))
        );

        // Minimal media, mark and stop.
        let Inbound::Media {
            media,
            sequence_number,
            ..
        } = parse_inbound(r#"{"event":"media","media":{"payload":""}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (sequence_number, media.chunk_number(), media.timestamp_ms()),
            (None, None, None)
        );
        assert!(matches!(
            parse_inbound(r#"{"event":"stop"}"#).unwrap(),
            Inbound::Stop { stop: None, .. }
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"stop","stop":null}"#).unwrap(),
            Inbound::Stop { stop: None, .. }
        ));
        assert!(matches!(
            parse_inbound(r#"{"event":"connected"}"#).unwrap(),
            Inbound::Connected { .. }
        ));

        // `event` need not come first; customParameters and tracks may be absent or null.
        let text = format!(
            r#"{{"streamSid":"{STREAM}","start":{{"accountSid":"A","streamSid":"{STREAM}","callSid":"C",
            "mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":null,
            "tracks":null}},"event":"start"}}"#
        );
        let Inbound::Start { start, .. } = parse_inbound(&text).unwrap() else {
            panic!()
        };
        assert!(start.custom_parameters.is_empty() && start.tracks.is_empty());

        // A non-numeric counter still parses; it just has no numeric value.
        let Inbound::Media { media, .. } =
            parse_inbound(r#"{"event":"media","media":{"timestamp":"soon","payload":""}}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(media.timestamp_ms(), None);
    }

    #[test]
    fn media_format_check() {
        let f = |encoding: &'static str, sample_rate, channels| MediaFormat {
            encoding: encoding.into(),
            sample_rate,
            channels,
        };
        assert!(f("audio/x-mulaw", 8000, 1).is_twilio_mulaw());
        assert!(f("audio/X-MULAW", 8000, 1).is_twilio_mulaw());
        assert!(!f("audio/x-alaw", 8000, 1).is_twilio_mulaw());
        assert!(!f("audio/x-mulaw", 16000, 1).is_twilio_mulaw());
        assert!(!f("audio/x-mulaw", 8000, 2).is_twilio_mulaw());
    }

    #[test]
    fn unknown_events() {
        for (text, name) in [
            (r#"{"event":"pause"}"#, "pause"),
            (r#"{"event":"Media","media":{"payload":""}}"#, "Media"),
            (r#"{"event":"","x":1}"#, ""),
            (r#"{"streamSid":"x","event":"future\u0021"}"#, "future!"),
        ] {
            assert_eq!(
                parse_inbound(text).unwrap_err(),
                MessageError::UnknownEvent(name.into()),
                "{text}"
            );
        }
        assert_eq!(
            parse_outbound(r#"{"event":"start","streamSid":"MZ1"}"#).unwrap_err(),
            MessageError::UnknownEvent("start".into())
        );
        let long = format!(r#"{{"event":"{}"}}"#, "é".repeat(100));
        let MessageError::UnknownEvent(name) = parse_inbound(&long).unwrap_err() else {
            panic!()
        };
        assert!(name.len() <= 64 + '…'.len_utf8(), "{name}");
    }

    #[test]
    fn malformed() {
        let huge = format!(
            r#"{{"event":"media","media":{{"payload":{}}}}}"#,
            "1".repeat(10_000)
        );
        for text in [
            "",
            " ",
            "null",
            "[]",
            "\"media\"",
            "42",
            "{",
            "{}",
            r#"{"event":null}"#,
            r#"{"event":5}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{}}"#,
            r#"{"event":"media","media":{"payload":5}}"#,
            r#"{"event":"media","media":{"payload":"AA==","track":1}}"#,
            r#"{"event":"media","sequenceNumber":-1,"media":{"payload":""}}"#,
            r#"{"event":"media","sequenceNumber":1.5,"media":{"payload":""}}"#,
            r#"{"event":"media","media":{"payload":"AA=="}} trailing"#,
            r#"{"event":"start","streamSid":"MZ1","start":{}}"#,
            r#"{"event":"start","streamSid":"MZ1","start":{"accountSid":"A","streamSid":"S","callSid":"C","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":"8000","channels":1}}}"#,
            r#"{"event":"start","streamSid":"MZ1","start":{"accountSid":"A","streamSid":"S","callSid":"C","mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"token":1}}}"#,
            r#"{"event":"mark","mark":{}}"#,
            r#"{"event":"dtmf","dtmf":{"track":"inbound_track"}}"#,
            "\u{0}\u{1}\u{2}\u{ff}",
            "{\"event\":\"media\",\"media\":{\"payload\":\"a\u{0}b\"}}",
            "\u{feff}{\"event\":\"connected\"}",
            huge.as_str(),
        ] {
            let err = parse_inbound(text).unwrap_err();
            let MessageError::Malformed(detail) = &err else {
                panic!("{text:?} gave {err:?}")
            };
            assert!(
                detail.len() <= MAX_ERROR_DETAIL + '…'.len_utf8(),
                "{detail}"
            );
        }
        for text in [
            r#"{"event":"media","media":{"payload":"AA=="}}"#,
            r#"{"event":"clear"}"#,
            r#"{"event":"mark","streamSid":"MZ1","mark":{"name":5}}"#,
            "",
        ] {
            assert!(
                matches!(parse_outbound(text), Err(MessageError::Malformed(_))),
                "{text}"
            );
        }
    }

    /// The flat path for `media` and `mark` gives exactly what the tagged
    /// enum gives (the value, and whether it borrows), and leaves every
    /// other frame, odd ones included, to it.
    #[test]
    fn hot_path_agrees_with_the_tagged_enum() {
        fn general(t: &str) -> Result<Inbound<'_>, MessageError> {
            serde_json::from_str(t).map_err(|e| classify(t, &INBOUND_EVENTS, &e))
        }
        for text in [
            r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"AA=="},"streamSid":"MZ1"}"#,
            r#"{"streamSid":"MZ1","media":{"payload":"AA=="},"event":"media"}"#,
            r#"{"event":"media","sequenceNumber":7,"media":{"chunk":2,"timestamp":40,"payload":"AA=="}}"#,
            r#"{"event":"media","streamSid":null,"sequenceNumber":null,"media":{"payload":"AA=="}}"#,
            r#"{"event":"media","media":{"payload":"A\/A="},"mark":{"name":"x"}}"#,
            r#"{"event":"media","media":{"payload":"AA=="},"mark":5}"#,
            r#"{"event":"media","media":{"payload":"AA=="},"mark":null,"extra":[1,{"a":2}]}"#,
            r#"{"event":"media","media":null}"#,
            r#"{"event":"media","media":{"payload":"AA=="},"media":{"payload":"AA=="}}"#,
            r#"{"event":"media","media":{"payload":"AA=="},"event":"mark"}"#,
            r#"{"event":"m\u0065dia","media":{"payload":"AA=="}}"#,
            r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"0:20:item_a"}}"#,
            r#"{"event":"mark","mark":{"name":"a\"b"},"media":{"payload":5}}"#,
            r#"{"event":"mark","mark":{"name":"x"},"media":{"payload":"AA=="}}"#,
            r#"{"event":"mark","mark":{"name":"x"},"mark":{"name":"y"}}"#,
            r#"{"event":"mark","mark":null}"#,
            r#"{"event":"mark","mark":{"name":"x"},"dtmf":{"digit":"1"}}"#,
            r#"{"event":"dtmf","dtmf":{"digit":"1"},"media":{"payload":"AA=="}}"#,
            r#"{"event":"stop","mark":{"name":"x"}}"#,
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
            r#"{"event":"hello","media":{"payload":"AA=="}}"#,
            r#"{"event":"media","sequenceNumber":-1,"media":{"payload":""}}"#,
            r#"{"event":"media","media":{"payload":"AA=="}} trailing"#,
            r#"[{"event":"media","media":{"payload":"AA=="}}]"#,
        ] {
            let (fast, slow) = (parse_inbound(text), general(text));
            assert_eq!(fast, slow, "{text}");
            if let (Ok(Inbound::Media { media: a, .. }), Ok(Inbound::Media { media: b, .. })) =
                (&fast, &slow)
            {
                assert_eq!(is_borrowed(&a.payload), is_borrowed(&b.payload), "{text}");
            }
        }
        assert!(parse_hot(r#"{"event":"dtmf","dtmf":{"digit":"1"}}"#).is_none());
        assert!(parse_hot(r#"{"event":"media","media":{"payload":"AA=="}}"#).is_some());
    }

    #[test]
    fn outbound_writers_exact() {
        let mut out = String::from("stale content");
        write_media(&mut out, STREAM, "//7+/w==");
        assert_eq!(
            out,
            format!(
                r#"{{"event":"media","streamSid":"{STREAM}","media":{{"payload":"//7+/w=="}}}}"#
            )
        );
        write_mark(&mut out, STREAM, "g1:item_1:480");
        assert_eq!(
            out,
            format!(
                r#"{{"event":"mark","streamSid":"{STREAM}","mark":{{"name":"g1:item_1:480"}}}}"#
            )
        );
        write_clear(&mut out, STREAM);
        assert_eq!(
            out,
            format!(r#"{{"event":"clear","streamSid":"{STREAM}"}}"#)
        );
    }

    #[test]
    fn inbound_writers_exact() {
        let mut out = String::new();
        write_connected(&mut out);
        assert_eq!(
            out,
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
        );
        write_start(&mut out, "MZ1", "CA1", "AC1", &[("token", "t"), ("a", "b")]);
        assert_eq!(
            out,
            r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"token":"t","a":"b"}}}"#
        );
        write_inbound_media(&mut out, "MZ1", 2, 1, 0, "AA==");
        assert_eq!(
            out,
            r#"{"event":"media","sequenceNumber":"2","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"AA=="}}"#
        );
        write_dtmf(&mut out, "MZ1", 9, "#");
        assert_eq!(
            out,
            r##"{"event":"dtmf","sequenceNumber":"9","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"#"}}"##
        );
        write_inbound_mark(&mut out, "MZ1", 10, "m");
        assert_eq!(
            out,
            r#"{"event":"mark","sequenceNumber":"10","streamSid":"MZ1","mark":{"name":"m"}}"#
        );
        write_stop(&mut out, "MZ1", u64::MAX, "CA1", "AC1");
        assert_eq!(
            out,
            r#"{"event":"stop","sequenceNumber":"18446744073709551615","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#
        );
    }

    /// Every writer's output parses back, with hostile strings, into the same values.
    #[test]
    fn round_trips() {
        let odd = "q\"uo\\te/\n\t\r\u{0}\u{1f}\u{7f} é 😀 \u{2028}";
        let mut out = String::new();

        for (sid, payload) in [(STREAM, "//7+/w=="), (odd, odd), ("", "")] {
            write_media(&mut out, sid, payload);
            let Outbound::Media { stream_sid, media } = parse_outbound(&out).unwrap() else {
                panic!()
            };
            assert_eq!(
                (stream_sid.as_ref(), media.payload.as_ref()),
                (sid, payload)
            );

            write_mark(&mut out, sid, payload);
            let Outbound::Mark { stream_sid, mark } = parse_outbound(&out).unwrap() else {
                panic!()
            };
            assert_eq!((stream_sid.as_ref(), mark.name.as_ref()), (sid, payload));

            write_clear(&mut out, sid);
            let Outbound::Clear { stream_sid } = parse_outbound(&out).unwrap() else {
                panic!()
            };
            assert_eq!(stream_sid, sid);

            write_start(&mut out, sid, CALL, odd, &[("token", payload), (odd, "x")]);
            let parsed = parse_inbound(&out).unwrap();
            assert_eq!(parsed.sequence_number(), Some(1));
            let Inbound::Start {
                stream_sid, start, ..
            } = parsed
            else {
                panic!()
            };
            assert_eq!((stream_sid.as_ref(), start.stream_sid.as_ref()), (sid, sid));
            assert_eq!(
                (start.call_sid.as_ref(), start.account_sid.as_ref()),
                (CALL, odd)
            );
            assert_eq!(start.tracks, ["inbound"]);
            assert!(start.media_format.is_twilio_mulaw());
            assert_eq!(start.custom_parameter("token"), Some(payload));
            assert_eq!(start.custom_parameter(odd), Some("x"));

            write_inbound_media(&mut out, sid, 42, 41, 800, payload);
            let parsed = parse_inbound(&out).unwrap();
            assert_eq!(parsed.sequence_number(), Some(42));
            let Inbound::Media {
                stream_sid, media, ..
            } = parsed
            else {
                panic!()
            };
            assert_eq!(stream_sid.as_deref(), Some(sid));
            assert_eq!(
                (media.chunk_number(), media.timestamp_ms()),
                (Some(41), Some(800))
            );
            assert_eq!(
                (media.track.as_deref(), media.payload.as_ref()),
                (Some("inbound"), payload)
            );

            write_inbound_mark(&mut out, sid, 43, payload);
            let parsed = parse_inbound(&out).unwrap();
            assert_eq!(parsed.sequence_number(), Some(43));
            let Inbound::Mark { mark, .. } = parsed else {
                panic!()
            };
            assert_eq!(mark.name, payload);

            write_dtmf(&mut out, sid, 44, payload);
            let Inbound::Dtmf { dtmf, .. } = parse_inbound(&out).unwrap() else {
                panic!()
            };
            assert_eq!(dtmf.digit, payload);

            write_stop(&mut out, sid, 45, odd, ACCOUNT);
            let parsed = parse_inbound(&out).unwrap();
            assert_eq!(parsed.sequence_number(), Some(45));
            let Inbound::Stop {
                stop: Some(stop),
                stream_sid,
                ..
            } = parsed
            else {
                panic!()
            };
            assert_eq!(stream_sid.as_deref(), Some(sid));
            assert_eq!(
                (stop.call_sid.as_deref(), stop.account_sid.as_deref()),
                (Some(odd), Some(ACCOUNT))
            );
        }

        write_connected(&mut out);
        assert!(matches!(
            parse_inbound(&out).unwrap(),
            Inbound::Connected { .. }
        ));
    }

    /// The escaper matches serde_json byte for byte, for every ASCII byte and some beyond.
    #[test]
    fn escaping_matches_serde_json() {
        let mut all: String = (0u8..=0x7f).map(char::from).collect();
        all.push_str("é 😀 \u{2028}\u{fffd}");
        for s in [all.as_str(), "", "plain", "\"", "\\", "a\u{0}", "\u{1f}z"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
        }
    }

    /// Writers reuse the caller's buffer: no reallocation once it is big enough.
    #[test]
    fn writers_reuse_buffer() {
        let payload = "A".repeat(216);
        let mut out = String::with_capacity(1024);
        let ptr = out.as_ptr();
        for _ in 0..3 {
            write_media(&mut out, STREAM, &payload);
            write_mark(&mut out, STREAM, "mark");
            write_inbound_media(&mut out, STREAM, u64::MAX, u64::MAX, u64::MAX, &payload);
        }
        assert_eq!(out.as_ptr(), ptr);
    }
}
