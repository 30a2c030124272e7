//! Parsing helpers both protocol drivers share.

use std::borrow::Cow;

use serde::Deserialize;

/// serde never borrows through `Option<Cow<str>>` on its own (it always
/// allocates); a newtype with `#[serde(borrow)]` does, which keeps audio
/// deltas uncopied.
pub(crate) fn opt_cow<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// For a frame that did not parse in full (`full_err`): its `type` when it
/// is an event the driver does not read (fields it never reads may hold
/// other types: none of our business), or why it is malformed (not JSON,
/// no `type`, or one of the `handled` events with a field of the wrong type).
pub(crate) fn unhandled_type<'a>(
    frame: &'a [u8],
    handled: &[&str],
    full_err: &serde_json::Error,
) -> Result<Cow<'a, str>, String> {
    let only: TypeOnly<'a> = serde_json::from_slice(frame).map_err(|e| e.to_string())?;
    if handled.contains(&only.kind.as_ref()) {
        return Err(format!("{}: {full_err}", only.kind));
    }
    Ok(only.kind)
}
