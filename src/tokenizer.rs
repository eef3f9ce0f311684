//! Tokenizers: characters for the tiny models we train, GPT-2's byte-level BPE for real checkpoints.
//!
//! A char-level model stores its vocabulary beside `config.json` as `tokenizer.json`:
//! ```json
//! {"type": "char", "vocab": ["\n", " ", "!", "$", "&", …]}
//! ```
//! `vocab[i]` is the single character (one Unicode scalar) of token id i; ids follow the sorted
//! order of the distinct characters of the training text. A model directory without
//! `tokenizer.json` (or with Hugging Face's own BPE `tokenizer.json`) whose vocab_size is 50257 uses
//! GPT-2's BPE, i.e. tiktoken's `r50k_base`, shipped inside the `tiktoken-rs` crate (no download).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file name of the tokenizer description inside a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// GPT-2's vocabulary size (50,000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// One token per character.
#[derive(Clone, Debug, PartialEq)]
pub struct CharTokenizer {
    /// id → character, sorted ascending.
    chars: Vec<char>,
    /// character → id.
    ids: HashMap<char, u32>,
}

#[derive(Serialize, Deserialize)]
struct CharFile {
    #[serde(rename = "type")]
    kind: String,
    vocab: Vec<String>,
}

impl CharTokenizer {
    /// The vocabulary is the sorted distinct characters of `text`.
    pub fn from_text(text: &str) -> CharTokenizer {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        CharTokenizer::from_chars(chars).expect("distinct chars")
    }

    /// Takes the vocabulary as given (id i = chars[i]); duplicates are an error.
    pub fn from_chars(chars: Vec<char>) -> Result<CharTokenizer> {
        let mut ids = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, i as u32).is_some() {
                return Err(Error::Input(format!(
                    "character tokenizer: character {c:?} appears twice in the vocabulary"
                )));
            }
        }
        Ok(CharTokenizer { chars, ids })
    }

    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Whether `c` is in the vocabulary.
    pub fn contains(&self, c: char) -> bool {
        self.ids.contains_key(&c)
    }

    /// Ids of the characters of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.ids.get(&c).copied().ok_or_else(|| {
                    Error::Input(format!(
                        "character {c:?} (U+{:04X}, at character {pos}) is not in this model's vocabulary of {} characters",
                        c as u32,
                        self.chars.len()
                    ))
                })
            })
            .collect()
    }

    /// The text of `ids`; an id ≥ vocab_size is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&id| {
                self.chars.get(id as usize).copied().ok_or_else(|| {
                    Error::Input(format!(
                        "token id {id} is outside the character vocabulary (size {})",
                        self.chars.len()
                    ))
                })
            })
            .collect()
    }

    /// The `tokenizer.json` text: `{"type": "char", "vocab": [...]}`.
    pub fn to_json_string(&self) -> String {
        let file = CharFile {
            kind: "char".into(),
            vocab: self.chars.iter().map(|c| c.to_string()).collect(),
        };
        serde_json::to_string(&file).expect("tokenizer serialises") + "\n"
    }

    /// Parses the `tokenizer.json` text; `source` names the file in messages.
    pub fn from_json_str(text: &str, source: &str) -> Result<CharTokenizer> {
        let file: CharFile = serde_json::from_str(text)
            .map_err(|e| Error::Input(format!("{source}: not a character tokenizer file: {e}")))?;
        if file.kind != "char" {
            return Err(Error::Input(format!(
                "{source}: tokenizer type is \"{}\", expected \"char\"",
                file.kind
            )));
        }
        let mut chars = Vec::with_capacity(file.vocab.len());
        for (i, s) in file.vocab.iter().enumerate() {
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => {
                    return Err(Error::Input(format!(
                        "{source}: vocab[{i}] = {s:?} is not exactly one character"
                    )));
                }
            }
        }
        CharTokenizer::from_chars(chars).map_err(|e| Error::Input(format!("{source}: {e}")))
    }

    /// Writes `dir/tokenizer.json` atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(
            &dir.as_ref().join(TOKENIZER_FILE),
            self.to_json_string().as_bytes(),
        )
    }
}

/// GPT-2's byte-level BPE (tiktoken `r50k_base`). `<|endoftext|>` is id 50256.
#[derive(Clone)]
pub struct Gpt2Tokenizer {
    bpe: &'static tiktoken_rs::CoreBPE,
}

impl std::fmt::Debug for Gpt2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gpt2Tokenizer(r50k_base)")
    }
}

impl Gpt2Tokenizer {
    pub const END_OF_TEXT: u32 = 50256;

    /// Built once per process from the vocabulary compiled into tiktoken-rs.
    pub fn new() -> Gpt2Tokenizer {
        Gpt2Tokenizer { bpe: tiktoken_rs::r50k_base_singleton() }
    }

    /// Ids of `text`; special tokens are treated as plain text (as `encode_ordinary` does).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The text of `ids`; bytes that are not valid UTF-8 on their own (a character split across
    /// tokens) become U+FFFD, so decoding a prefix during generation never fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.bpe.decode_bytes(ids).map_err(|e| {
            Error::Input(format!(
                "GPT-2 tokenizer: cannot decode: {e:?} (vocabulary size {GPT2_VOCAB_SIZE})"
            ))
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Gpt2Tokenizer::new()
    }
}

/// Whichever tokenizer a model directory uses.
#[derive(Clone, Debug)]
pub enum Tokenizer {
    Char(CharTokenizer),
    Gpt2(Gpt2Tokenizer),
}

/// The number of token ids a Hugging Face `tokenizer.json` defines: its `model.vocab` entries and
/// the `added_tokens` ids beyond them; None when the JSON is not one (ours is {"type": "char"}).
fn hugging_face_vocab_size(json: &serde_json::Value) -> Option<usize> {
    let vocab = json.get("model")?.get("vocab")?.as_object()?;
    let ids = vocab.values().filter_map(|v| v.as_u64());
    let added = json.get("added_tokens").and_then(|a| a.as_array()).into_iter().flatten();
    let added_ids = added.filter_map(|t| t.get("id").and_then(|id| id.as_u64()));
    ids.chain(added_ids).max().map(|m| m as usize + 1)
}

impl Tokenizer {
    /// The tokenizer of the model in `dir` with vocabulary size `vocab_size` (from its config.json):
    /// our `tokenizer.json` of type "char" → [`CharTokenizer`]; otherwise, with vocab_size 50257,
    /// GPT-2's BPE; anything else is an error. The char vocabulary must match `vocab_size`.
    pub fn load(dir: impl AsRef<Path>, vocab_size: usize) -> Result<Tokenizer> {
        let path = dir.as_ref().join(TOKENIZER_FILE);
        let source = path.display().to_string();
        let ours = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let json = serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| Error::Input(format!("{source}: invalid JSON: {e}")))?;
                let kind = json.get("type").and_then(|t| t.as_str().map(str::to_owned));
                // Hugging Face's tokenizer.json: its vocabulary must be the model's.
                if let Some(size) = hugging_face_vocab_size(&json)
                    && size != vocab_size
                {
                    return Err(Error::Input(format!(
                        "{source} is a Hugging Face tokenizer of {size} tokens (model.vocab + \
                         added_tokens) but config.json says vocab_size {vocab_size}; the \
                         tokenizer belongs to another model"
                    )));
                }
                if kind.as_deref() == Some("char") {
                    Some(CharTokenizer::from_json_str(&text, &source)?)
                } else {
                    None
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Input(format!("cannot read {source}: {e}"))),
        };
        match ours {
            Some(t) if t.vocab_size() == vocab_size => Ok(Tokenizer::Char(t)),
            Some(t) => Err(Error::Input(format!(
                "{source} has {} characters but config.json says vocab_size {vocab_size}",
                t.vocab_size()
            ))),
            None if vocab_size == GPT2_VOCAB_SIZE => Ok(Tokenizer::Gpt2(Gpt2Tokenizer::new())),
            None => Err(Error::Input(format!(
                "{}: no character tokenizer ({TOKENIZER_FILE} with \"type\": \"char\") and vocab_size is {vocab_size}, \
                 not GPT-2's {GPT2_VOCAB_SIZE}; cannot tell which tokenizer this model uses",
                dir.as_ref().display()
            ))),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(t) => t.vocab_size(),
            Tokenizer::Gpt2(_) => GPT2_VOCAB_SIZE,
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char(t) => t.encode(text),
            Tokenizer::Gpt2(t) => Ok(t.encode(text)),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Char(t) => t.decode(ids),
            Tokenizer::Gpt2(t) => t.decode(ids),
        }
    }

    /// Writes what [`Tokenizer::load`] needs into `dir`: `tokenizer.json` for characters; nothing
    /// for GPT-2's BPE (it is recognised by vocab_size 50257).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        match self {
            Tokenizer::Char(t) => t.save(dir),
            Tokenizer::Gpt2(_) => Ok(()),
        }
    }
}
