//! A `tools/call` result as the text the model reads.
//!
//! - Text parts are joined with newlines, in order.
//! - Images, audio and blob resources are named with their type and size in bytes
//!   (`[image image/png, 1 KiB]`), never pasted as base64; a text resource is named and its
//!   text follows; a resource link is named with its URI.
//! - A result with no content but `structuredContent` gives that JSON.
//! - `isError: true` makes `ok = false`.
//! - The text is cut at `output_cap` bytes (on a character boundary) and says where.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};

use crate::agent::ToolOutput;

/// `result` as a [`ToolOutput`] of at most `output_cap` bytes of its text (plus the marker
/// that says it was cut).
pub fn tool_output(result: &CallToolResult, output_cap: usize) -> ToolOutput {
    let mut parts: Vec<String> = result.content.iter().map(describe).collect();
    if parts.is_empty() {
        if let Some(structured) = &result.structured_content {
            parts.push(structured.to_string());
        }
    }
    let (text, truncated) = cap(parts.join("\n"), output_cap);
    ToolOutput {
        ok: result.is_error != Some(true),
        text,
        truncated,
    }
}

fn describe(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(t) => t.text.clone(),
        ContentBlock::Image(i) => format!("[image {}, {}]", i.mime_type, size(base64_len(&i.data))),
        ContentBlock::Audio(a) => format!("[audio {}, {}]", a.mime_type, size(base64_len(&a.data))),
        ContentBlock::Resource(r) => match &r.resource {
            ResourceContents::TextResourceContents {
                uri,
                mime_type,
                text,
                ..
            } => format!(
                "[resource {uri}{}, {}]\n{text}",
                mime(mime_type.as_deref()),
                size(text.len())
            ),
            ResourceContents::BlobResourceContents {
                uri,
                mime_type,
                blob,
                ..
            } => format!(
                "[resource {uri}{}, {}]",
                mime(mime_type.as_deref()),
                size(base64_len(blob))
            ),
            _ => "[a resource of a kind nemo does not read]".to_string(),
        },
        ContentBlock::ResourceLink(link) => {
            let mut s = format!(
                "[resource link {}{}",
                link.uri,
                mime(link.mime_type.as_deref())
            );
            if let Some(bytes) = link.size {
                s.push_str(&format!(
                    ", {}",
                    size(usize::try_from(bytes).unwrap_or(usize::MAX))
                ));
            }
            s.push(']');
            if let Some(d) = link.description.as_deref().filter(|d| !d.is_empty()) {
                s.push_str(&format!(" {d}"));
            }
            s
        }
        _ => "[content of a type nemo does not read]".to_string(),
    }
}

fn mime(m: Option<&str>) -> String {
    m.map(|m| format!(" ({m})")).unwrap_or_default()
}

/// `n` bytes, exactly below 1 KiB and in KiB/MiB above.
fn size(n: usize) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The number of bytes base64 text decodes to (whitespace ignored).
fn base64_len(data: &str) -> usize {
    let mut chars = 0usize;
    let mut padding = 0usize;
    for b in data.bytes().filter(|b| !b.is_ascii_whitespace()) {
        chars += 1;
        if b == b'=' {
            padding += 1;
        }
    }
    (chars / 4 * 3 + (chars % 4 * 3) / 4).saturating_sub(padding)
}

/// `text` cut to at most `cap` bytes on a character boundary, with a line saying so.
fn cap(text: String, cap: usize) -> (String, bool) {
    if text.len() <= cap {
        return (text, false);
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let total = text.len();
    let mut cut = text;
    cut.truncate(end);
    cut.push_str(&format!("\n[output cut at {end} of {total} bytes]"));
    (cut, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{ContentBlock, Resource};

    fn result(content: Vec<ContentBlock>, is_error: Option<bool>) -> CallToolResult {
        let mut r = CallToolResult::success(content);
        r.is_error = is_error;
        r
    }

    #[test]
    fn text_parts_are_joined_and_binary_parts_described() {
        let r = result(
            vec![
                ContentBlock::text("first"),
                ContentBlock::image("iVBORw0KGgo=", "image/png"),
                ContentBlock::audio("AAAA AAAA", "audio/wav"),
                ContentBlock::embedded_text("file:///a.txt", "hello"),
                ContentBlock::resource(ResourceContents::BlobResourceContents {
                    uri: "mem://z".into(),
                    mime_type: None,
                    blob: "A".repeat(4096),
                    meta: None,
                }),
                ContentBlock::text("last"),
            ],
            None,
        );
        let out = tool_output(&r, 10_000);
        assert!(out.ok);
        assert!(!out.truncated);
        assert_eq!(
            out.text,
            "first\n[image image/png, 8 bytes]\n[audio audio/wav, 6 bytes]\n\
             [resource file:///a.txt (text/plain), 5 bytes]\nhello\n\
             [resource mem://z, 3.0 KiB]\nlast"
        );
    }

    #[test]
    fn resource_links_are_named_with_uri_type_and_size() {
        let mut link = Resource::new("file:///data.csv", "data");
        link.mime_type = Some("text/csv".into());
        link.size = Some(2048);
        link.description = Some("the data".into());
        let out = tool_output(&result(vec![ContentBlock::ResourceLink(link)], None), 1000);
        assert_eq!(
            out.text,
            "[resource link file:///data.csv (text/csv), 2.0 KiB] the data"
        );
    }

    #[test]
    fn is_error_makes_a_failed_result() {
        let out = tool_output(&result(vec![ContentBlock::text("boom")], Some(true)), 100);
        assert!(!out.ok);
        assert_eq!(out.text, "boom");
        assert!(tool_output(&result(vec![], Some(false)), 100).ok);
    }

    #[test]
    fn structured_content_stands_in_for_missing_content() {
        let mut r = result(vec![], None);
        r.structured_content = Some(serde_json::json!({"t": 21}));
        assert_eq!(tool_output(&r, 100).text, r#"{"t":21}"#);
    }

    #[test]
    fn long_text_is_cut_at_the_cap_on_a_character_boundary() {
        let r = result(vec![ContentBlock::text("aé".repeat(10))], None);
        let out = tool_output(&r, 4);
        assert!(out.truncated);
        assert_eq!(out.text, "aéa\n[output cut at 4 of 30 bytes]");
        let out = tool_output(&r, 30);
        assert!(!out.truncated);
        assert_eq!(out.text.len(), 30);
    }

    #[test]
    fn base64_sizes_are_the_decoded_sizes() {
        assert_eq!(base64_len(""), 0);
        assert_eq!(base64_len("QQ=="), 1);
        assert_eq!(base64_len("QUI="), 2);
        assert_eq!(base64_len("QUJD"), 3);
        assert_eq!(base64_len("QUJD\nREVG"), 6);
    }
}
