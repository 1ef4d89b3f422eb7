//! The tools on offer: nemo's built-ins, the user's from config.toml, and each MCP
//! server's (`server.tool`), by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Tool, ToolError};
use crate::protocol::ToolSpec;

#[derive(Clone, Default)]
pub struct Registry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// nemo's built-in tools.
    pub fn builtins() -> Registry {
        let mut r = Registry::new();
        for t in super::tools::builtins() {
            r.tools.insert(t.spec().name.clone(), t);
        }
        r
    }

    /// Adds `tool` under its spec's name; a name already taken is an error naming it.
    pub fn add(&mut self, tool: Arc<dyn Tool>) -> Result<(), ToolError> {
        let name = tool.spec().name.clone();
        if self.tools.contains_key(&name) {
            return Err(ToolError::Failed {
                tool: name,
                message: "a tool of this name is already registered".into(),
            });
        }
        self.tools.insert(name, tool);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Arc<dyn Tool>, ToolError> {
        self.tools
            .get(name)
            .ok_or_else(|| ToolError::Unknown(name.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// The tools `keep` says yes to.
    pub fn filtered(&self, keep: impl Fn(&dyn Tool) -> bool) -> Registry {
        Registry {
            tools: self
                .tools
                .iter()
                .filter(|(_, t)| keep(t.as_ref()))
                .map(|(n, t)| (n.clone(), Arc::clone(t)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The specs of every tool, in name order (what the model is offered).
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec().clone()).collect()
    }
}
