//! The bundled data and the batches we train on.
//!
//! The texts in `data/` (see data/README.md for where they come from and their licences) are
//! compiled into the binary, so `glassgrad train` works from any directory, as an installed binary
//! must. A [`TokenDataset`] splits a token stream 90/10 by position (the first 90% trains, the last
//! 10% validates, as nanoGPT does) and samples seeded, reproducible (inputs, targets) windows.

use crate::cpu::Rng;
use crate::error::{Error, Result};

/// Tiny Shakespeare: 1,115,394 characters, 65 distinct.
pub const SHAKESPEARE: &str = include_str!("../data/tinyshakespeare.txt");

/// VADER's movie-review sentences: `id<TAB>mean_rating<TAB>text`, CRLF line ends.
pub const MOVIE_SNIPPETS_TSV: &str = include_str!("../data/vader_movie_snippets.tsv");

/// VADER's tweets, same format (an out-of-domain test set).
pub const TWEETS_TSV: &str = include_str!("../data/vader_tweets.tsv");

/// Which part of a [`TokenDataset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// A batch of next-token windows: `targets[b][t] = inputs[b][t + 1]` in the source stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq_len: usize,
    /// (B, T) token ids.
    pub inputs: Vec<u32>,
    /// (B, T) the next token after each input.
    pub targets: Vec<u32>,
}

/// A token stream split by position into training and validation parts.
#[derive(Clone, Debug)]
pub struct TokenDataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl TokenDataset {
    /// The first (1 − val_fraction) of `tokens` trains, the rest validates. Errors for an empty
    /// stream or a fraction outside [0, 1).
    pub fn split(tokens: &[u32], val_fraction: f64) -> Result<TokenDataset> {
        if tokens.is_empty() {
            return Err(Error::Input("the dataset is empty: no tokens to train on".into()));
        }
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::Input(format!(
                "validation fraction {val_fraction} must be in [0, 1)"
            )));
        }
        let n_train = ((tokens.len() as f64) * (1.0 - val_fraction)).round() as usize;
        Ok(TokenDataset { train: tokens[..n_train].to_vec(), val: tokens[n_train..].to_vec() })
    }

    /// The 90/10 split.
    pub fn new(tokens: &[u32]) -> Result<TokenDataset> {
        TokenDataset::split(tokens, 0.1)
    }

    pub fn tokens(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// `batch` windows of `seq_len + 1` tokens starting at positions drawn from `rng`: the same
    /// seed gives the same batches. Errors when the split is shorter than seq_len + 1.
    pub fn sample(
        &self,
        split: Split,
        batch: usize,
        seq_len: usize,
        rng: &mut Rng,
    ) -> Result<Batch> {
        let data = self.tokens(split);
        if batch == 0 || seq_len == 0 {
            return Err(Error::Input(format!(
                "batch size ({batch}) and sequence length ({seq_len}) must be positive"
            )));
        }
        if data.len() < seq_len + 1 {
            return Err(Error::Input(format!(
                "the {split:?} split has {} tokens, fewer than sequence length + 1 = {}; use more text or a shorter sequence",
                data.len(),
                seq_len + 1
            )));
        }
        let starts = data.len() - seq_len; // valid starts: 0 ..= len − T − 1
        let mut inputs = Vec::with_capacity(batch * seq_len); // (B, T)
        let mut targets = Vec::with_capacity(batch * seq_len); // (B, T)
        for _ in 0..batch {
            let s = rng.below(starts);
            inputs.extend_from_slice(&data[s..s + seq_len]);
            targets.extend_from_slice(&data[s + 1..s + seq_len + 1]);
        }
        Ok(Batch { batch, seq_len, inputs, targets })
    }
}

/// Anything the trainer can draw seeded (inputs, targets) batches from: a token stream
/// ([`TokenDataset`], next-token windows) or a set of labelled examples
/// (`train::tasks::Examples`, one example a row, targets ignored outside the answer).
pub trait Batches {
    /// `batch` rows of `seq_len` tokens from `split`, drawn from `rng` (same seed, same batch).
    fn sample(&self, split: Split, batch: usize, seq_len: usize, rng: &mut Rng) -> Result<Batch>;

    /// The answer tokens of a classification task: the loss is then the cross-entropy over these
    /// tokens' logits only (`Gpt2::forward_class_loss`). `None` (token streams): the whole vocabulary.
    fn classes(&self) -> Option<Vec<u32>> {
        None
    }
}

impl Batches for TokenDataset {
    fn sample(&self, split: Split, batch: usize, seq_len: usize, rng: &mut Rng) -> Result<Batch> {
        TokenDataset::sample(self, split, batch, seq_len, rng)
    }
}

/// The sentiment of a rated sentence (neutral ones are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sentiment {
    Positive,
    Negative,
}

impl Sentiment {
    pub fn as_str(self) -> &'static str {
        match self {
            Sentiment::Positive => "positive",
            Sentiment::Negative => "negative",
        }
    }
}

/// One rated sentence of a VADER ground-truth file.
#[derive(Clone, Debug, PartialEq)]
pub struct RatedSentence {
    pub id: String,
    /// Mean of ≥ 20 human ratings in [−4, +4].
    pub rating: f64,
    pub text: String,
    pub sentiment: Sentiment,
}

/// Parses a VADER ground-truth TSV (`id<TAB>mean_rating<TAB>text`, CRLF or LF): positive when
/// rating ≥ 0.5, negative when ≤ −0.5, neutral sentences dropped. `source` names it in errors.
pub fn parse_rated_tsv(text: &str, source: &str) -> Result<Vec<RatedSentence>> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, '\t');
        let (Some(id), Some(rating), Some(sentence)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(Error::Input(format!(
                "{source}:{}: expected id<TAB>rating<TAB>text",
                i + 1
            )));
        };
        let rating: f64 = rating.trim().parse().map_err(|_| {
            Error::Input(format!("{source}:{}: rating {rating:?} is not a number", i + 1))
        })?;
        let sentiment = if rating >= 0.5 {
            Sentiment::Positive
        } else if rating <= -0.5 {
            Sentiment::Negative
        } else {
            continue;
        };
        out.push(RatedSentence {
            id: id.to_string(),
            rating,
            text: sentence.to_string(),
            sentiment,
        });
    }
    Ok(out)
}

/// The bundled movie-review sentences with a positive or negative label (10,072 of 10,605).
pub fn movie_sentences() -> Vec<RatedSentence> {
    parse_rated_tsv(MOVIE_SNIPPETS_TSV, "data/vader_movie_snippets.tsv")
        .expect("the bundled file parses")
}

/// The bundled tweets with a positive or negative label.
pub fn tweets() -> Vec<RatedSentence> {
    parse_rated_tsv(TWEETS_TSV, "data/vader_tweets.tsv").expect("the bundled file parses")
}
