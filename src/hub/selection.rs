//! Which files of a repo nemo fetches: for a safetensors model what it loads (config,
//! weights + index, tokenizer, template, generation defaults); for a GGUF repo one `.gguf`
//! file, the one asked for or a sensible default quantization. Pure: the hub's file list in,
//! a plan out.

use serde::Deserialize;

use super::HubError;

/// A file as the hub's API lists it (`/api/models/{repo}/revision/{rev}?blobs=true`).
#[derive(Clone, Debug, Deserialize)]
pub struct RepoFile {
    #[serde(rename = "rfilename")]
    pub name: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// The git object id: for small files the hub's ETag is this sha1.
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    #[serde(default)]
    pub size: Option<u64>,
}

/// The API's answer, the parts we use.
#[derive(Clone, Debug, Deserialize)]
pub struct RepoInfo {
    /// The commit the revision points to.
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<RepoFile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Safetensors,
    Gguf,
}

#[derive(Clone, Debug)]
pub struct PlannedFile {
    pub name: String,
    pub size: Option<u64>,
    pub blob_id: Option<String>,
    pub lfs_sha256: Option<String>,
}

impl From<&RepoFile> for PlannedFile {
    fn from(f: &RepoFile) -> Self {
        PlannedFile {
            name: f.name.clone(),
            size: f.lfs.as_ref().and_then(|l| l.size).or(f.size),
            blob_id: f.blob_id.clone(),
            lfs_sha256: f.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub kind: Kind,
    pub files: Vec<PlannedFile>,
    /// What was chosen for the user, in one line (a default quantization).
    pub note: Option<String>,
}

impl Plan {
    pub fn total_size(&self) -> u64 {
        self.files.iter().filter_map(|f| f.size).sum()
    }

    /// What `ModelFolder::open` gets, relative to the snapshot: "" for the folder itself,
    /// else the `.gguf` file.
    pub fn entry(&self) -> &str {
        match self.kind {
            Kind::Safetensors => "",
            Kind::Gguf => self.files.first().map(|f| f.name.as_str()).unwrap_or(""),
        }
    }
}

/// The small files a model folder may have that nemo reads.
pub const FOLDER_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Default quantizations, best first: a good size/quality trade, then fallbacks.
pub const GGUF_PREFERENCE: &[&str] = &[
    "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q4_1", "Q8_0", "Q6_K", "BF16", "F16",
];

/// A repo path that stays inside the snapshot folder when joined to it.
pub fn is_safe_path(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

pub fn plan(
    repo: &str,
    revision: &str,
    info: &RepoInfo,
    gguf_file: Option<&str>,
) -> Result<Plan, HubError> {
    if !super::cache::is_commit_hash(&info.sha) {
        return Err(HubError::Remote(format!(
            "{repo}: the hub's answer names no commit (`sha` is `{}`)",
            info.sha.chars().take(60).collect::<String>()
        )));
    }
    // Names that would leave the snapshot folder are ignored.
    let info = &RepoInfo {
        sha: info.sha.clone(),
        siblings: info
            .siblings
            .iter()
            .filter(|f| is_safe_path(&f.name))
            .cloned()
            .collect(),
    };
    let top = |f: &&RepoFile| !f.name.contains('/');
    let safetensors: Vec<&RepoFile> = info
        .siblings
        .iter()
        .filter(top)
        .filter(|f| f.name.ends_with(".safetensors"))
        .collect();
    let ggufs: Vec<&RepoFile> = info
        .siblings
        .iter()
        .filter(|f| is_gguf(&f.name) && !f.name.to_ascii_lowercase().contains("mmproj"))
        .collect();
    let mk = |kind, files: Vec<PlannedFile>, note| Plan {
        repo: repo.to_string(),
        revision: revision.to_string(),
        commit: info.sha.clone(),
        kind,
        files,
        note,
    };
    if let Some(want) = gguf_file {
        let Some(f) = info.siblings.iter().find(|f| f.name == want) else {
            let names: Vec<&str> = ggufs.iter().map(|f| f.name.as_str()).collect();
            return Err(HubError::Spec(format!(
                "{repo} has no file `{want}`{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (its .gguf files: {})", names.join(", "))
                }
            )));
        };
        if !is_gguf(&f.name) {
            return Err(HubError::Spec(format!(
                "`{want}`: only a .gguf file can be picked from a repo"
            )));
        }
        return Ok(mk(Kind::Gguf, vec![f.into()], None));
    }
    if !safetensors.is_empty() {
        let files = info
            .siblings
            .iter()
            .filter(top)
            .filter(|f| FOLDER_FILES.contains(&f.name.as_str()) || f.name.ends_with(".safetensors"))
            .map(PlannedFile::from)
            .collect();
        return Ok(mk(Kind::Safetensors, files, None));
    }
    match ggufs.len() {
        0 => Err(HubError::Spec(format!(
            "{repo} has neither safetensors weights nor a .gguf file"
        ))),
        1 => Ok(mk(Kind::Gguf, vec![ggufs[0].into()], None)),
        n => {
            let quant_of = |f: &RepoFile| f.name.to_ascii_uppercase();
            let picked = GGUF_PREFERENCE
                .iter()
                .find_map(|q| {
                    ggufs.iter().find(|f| {
                        let up = quant_of(f);
                        // Sharded files (`-00001-of-00003`) are not one file: skip them.
                        !up.contains("-OF-")
                            && (up.ends_with(&format!("{q}.GGUF"))
                                || up.ends_with(&format!("-{q}.GGUF")))
                    })
                })
                .or_else(|| ggufs.iter().find(|f| !quant_of(f).contains("-OF-")))
                .ok_or_else(|| {
                    HubError::Spec(format!(
                        "{repo}: its .gguf files are split in parts, which nemo cannot load yet"
                    ))
                })?;
            let note = format!(
                "{repo} has {n} .gguf files; picked {} (choose another with --file NAME or {repo}:NAME)",
                picked.name
            );
            Ok(mk(Kind::Gguf, vec![(*picked).into()], Some(note)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(names: &[&str]) -> RepoInfo {
        RepoInfo {
            sha: "c".repeat(40),
            siblings: names
                .iter()
                .map(|n| RepoFile {
                    name: n.to_string(),
                    size: Some(10),
                    blob_id: None,
                    lfs: None,
                })
                .collect(),
        }
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.files.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn safetensors_repo_gets_what_nemo_loads_and_nothing_else() {
        let i = info(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "modeling_nemotron_h.py",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "original/model.safetensors",
            "nemo/model.nemo",
        ]);
        let p = plan("o/m", "main", &i, None).unwrap();
        assert_eq!(p.kind, Kind::Safetensors);
        assert_eq!(
            names(&p),
            [
                "config.json",
                "generation_config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ]
        );
        assert_eq!(p.total_size(), 80);
        assert_eq!(p.entry(), "");
    }

    #[test]
    fn gguf_repo_defaults_to_q4_k_m_and_says_so() {
        let i = info(&[
            "README.md",
            "M-Q2_K.gguf",
            "M-Q4_K_M.gguf",
            "M-Q8_0.gguf",
            "M-f16.gguf",
        ]);
        let p = plan("o/m-GGUF", "main", &i, None).unwrap();
        assert_eq!(names(&p), ["M-Q4_K_M.gguf"]);
        assert!(p.note.as_deref().unwrap().contains("picked M-Q4_K_M.gguf"));
        assert_eq!(p.entry(), "M-Q4_K_M.gguf");
        let i = info(&["M-Q8_0.gguf", "M-Q6_K.gguf"]);
        assert_eq!(
            names(&plan("o/m", "main", &i, None).unwrap()),
            ["M-Q8_0.gguf"]
        );
    }

    #[test]
    fn named_gguf_file_is_taken_and_a_wrong_name_lists_the_choices() {
        let i = info(&["M-Q4_K_M.gguf", "M-Q8_0.gguf"]);
        let p = plan("o/m", "main", &i, Some("M-Q8_0.gguf")).unwrap();
        assert_eq!(names(&p), ["M-Q8_0.gguf"]);
        assert!(p.note.is_none());
        let e = plan("o/m", "main", &i, Some("M-Q3.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("M-Q3.gguf") && e.contains("M-Q8_0.gguf"), "{e}");
    }

    #[test]
    fn names_outside_the_snapshot_and_bad_commits_are_refused() {
        let i = info(&[
            "../evil.gguf",
            "/abs.gguf",
            "a/../../b.gguf",
            "ok-Q4_K_M.gguf",
        ]);
        let p = plan("o/m", "main", &i, None).unwrap();
        assert_eq!(names(&p), ["ok-Q4_K_M.gguf"]);
        assert!(plan("o/m", "main", &i, Some("../evil.gguf")).is_err());
        let mut bad = info(&["config.json"]);
        bad.sha = "../../x".into();
        assert!(plan("o/m", "main", &bad, None).is_err());
    }

    #[test]
    fn repo_without_weights_is_refused() {
        let e = plan("o/m", "main", &info(&["README.md"]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither safetensors"), "{e}");
    }

    #[test]
    fn lfs_size_and_sha256_come_from_the_listing() {
        let i: RepoInfo = serde_json::from_str(
            r#"{"sha":"0123456789012345678901234567890123456789","siblings":[
            {"rfilename":"model.safetensors","size":5,"blobId":"b1",
             "lfs":{"sha256":"ABCD","size":1000,"pointerSize":130}},
            {"rfilename":"config.json","size":12,"blobId":"b2"}]}"#,
        )
        .unwrap();
        let p = plan("o/m", "main", &i, None).unwrap();
        assert_eq!(p.files[0].size, Some(1000));
        assert_eq!(p.files[0].lfs_sha256.as_deref(), Some("abcd"));
        assert_eq!(p.files[1].blob_id.as_deref(), Some("b2"));
        assert_eq!(p.commit, "0123456789012345678901234567890123456789");
    }
}
