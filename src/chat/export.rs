//! A saved session as a Markdown document (`/export FILE.md`): title, model, sampling and
//! thinking settings, then each turn. Reads the session file's record only.

use super::session_store::SessionFile;
use crate::protocol::Budget;

/// The session as a Markdown document: title, model, sampling and thinking settings, then
/// each turn as `## You`, the reasoning in a `<details>` block, `## Nemotron` and the
/// answer, with the turn's numbers in italics.
pub fn export_markdown(s: &SessionFile) -> String {
    let mut md = String::new();
    let p = &s.sampling;
    md.push_str(&format!("# Nemotron chat {}\n\n", s.id));
    md.push_str(&format!(
        "- Model: `{}` (identity `{}`)\n",
        s.model.path, s.model.config_hash
    ));
    md.push_str(&format!(
        "- Created: {} · updated: {}\n",
        s.created, s.updated
    ));
    md.push_str(&format!(
        "- Sampling: temperature {}, top_p {}, top_k {}, min_p {}, repetition_penalty {}, presence_penalty {}, seed {}\n",
        p.temperature,
        p.top_p,
        p.top_k,
        p.min_p,
        p.repetition_penalty,
        p.presence_penalty,
        p.seed.map_or("random".to_string(), |s| s.to_string()),
    ));
    let budget = match s.thinking.budget {
        Budget::Off => "off".to_string(),
        Budget::Unlimited => "on, unlimited budget".to_string(),
        Budget::Tokens(n) => format!("on, budget {n} tokens"),
    };
    md.push_str(&format!("- Thinking: {budget}\n"));
    if let Some(system) = &s.system {
        md.push_str("\n**System prompt:**\n\n");
        md.push_str(system.trim_end());
        md.push('\n');
    }
    for turn in &s.turns {
        md.push_str("\n## You\n\n");
        md.push_str(turn.user.trim_end());
        md.push('\n');
        md.push_str("\n## Nemotron\n\n");
        if !turn.reasoning.is_empty() {
            let summary = match &turn.stats {
                Some(st) => format!("Reasoning ({} tokens)", st.reasoning_tokens),
                None => "Reasoning".to_string(),
            };
            md.push_str(&format!("<details><summary>{summary}</summary>\n\n"));
            md.push_str(turn.reasoning.trim_end());
            md.push_str("\n\n</details>\n\n");
        }
        for t in &turn.tools {
            let args = serde_json::to_string_pretty(t.call.arguments())
                .unwrap_or_else(|_| t.call.arguments().to_string());
            md.push_str(&format!(
                "**Tool `{}`** ({}):\n\n```json\n{}\n```\n\n",
                t.call.name(),
                t.state,
                args
            ));
            if !t.output.is_empty() {
                let fence = if t.output.contains("```") {
                    "~~~~"
                } else {
                    "```"
                };
                md.push_str(&format!("{fence}\n{}\n{fence}\n\n", t.output.trim_end()));
            }
        }
        if !turn.answer.is_empty() {
            md.push_str(turn.answer.trim_end());
            md.push('\n');
        } else if turn.tools.is_empty() {
            md.push_str("*(no answer)*\n");
        }
        if let Some(st) = &turn.stats {
            md.push_str(&format!(
                "\n*{} prompt tokens ({} reused) · {} reasoning · {} answer · first token {:.0} ms · {:.1} tokens/s · {}*\n",
                st.prompt_tokens,
                st.reused_tokens,
                st.reasoning_tokens,
                st.completion_tokens,
                st.ttft_ms,
                st.decode_tokens_per_s,
                st.finish_reason,
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::session_store::tests::session;

    #[test]
    fn export_markdown_has_headings_reasoning_and_stats() {
        let md = export_markdown(&session("a", "2025-01-01T00:00:00.000Z", "2+2?"));
        assert!(md.starts_with("# Nemotron chat a\n"), "{md}");
        assert!(md.contains("`/models/nano`"), "{md}");
        assert!(md.contains("temperature 0.6, top_p 0.95"), "{md}");
        assert!(md.contains("seed 42"), "{md}");
        assert!(md.contains("budget 512 tokens"), "{md}");
        assert!(md.contains("## You\n\n2+2?\n"), "{md}");
        assert!(md.contains(
            "<details><summary>Reasoning (5 tokens)</summary>\n\nTwo plus two.\n\n</details>"
        ));
        assert!(md.contains("## Nemotron\n\n<details>"), "{md}");
        assert!(md.contains("</details>\n\n4\n"), "{md}");
        assert!(md.contains("\n*20 prompt tokens (0 reused) · 5 reasoning · 2 answer · first token 120 ms · 33.3 tokens/s · stop*\n"), "{md}");
        assert!(
            md.contains("## You\n\nand again?\n\n## Nemotron\n\n*(no answer)*\n"),
            "{md}"
        );
    }
}
