//! The fine-tuning tasks, on the bundled movie-review sentences (data/README.md).
//!
//! - **style**: the review sentences as one text stream (a sentence a line), split 90/10 by
//!   position: a model pretrained on Shakespeare learns modern review English. Measured by the
//!   validation loss before and after.
//! - **sentiment**: a labelled task. Each example is one row, `<sentence> => positive\n` or
//!   `<sentence> => negative\n` (` ::` in place of ` =>` where the vocabulary lacks `=` or `>`,
//!   as Shakespeare's does); only the answer's first token is a target (the prompt, the rest of
//!   the answer and the padding are ignored, label −100 in PyTorch's terms), and the loss is a
//!   two-way classifier's: cross-entropy over the logits of the two deciding tokens alone
//!   (`Gpt2::forward_class_loss`; its value is ln 2 ≈ 0.693 at chance). The full 65-way
//!   cross-entropy spends the gradient on the 63 characters that are never an answer: with it
//!   the tour's model stayed at chance after 600 LoRA steps, with the two-way loss it learns
//!   (docs/lora.md, "The sentiment task"). The examples are
//!   shuffled once with a fixed seed and split 80/10/10 into train / validation / test; accuracy is
//!   measured on the test split and on the bundled tweets (out of domain) by comparing the model's
//!   next-token scores for the first token of " positive" and " negative" after `<sentence> =>`.
//!
//! **Characters outside a char model's vocabulary.** The Shakespeare vocabulary has 65 characters
//! (letters, digit 3, space, newline and `!$&',-.:;?`). [`fit_to_vocab`] maps typographic quotes
//! and `"` to `'`, strips accents from Latin letters (é → e), and drops every other character it
//! cannot map (digits other than 3, `/`, `(`, `*`, …); the count dropped is reported. A BPE model
//! takes the text as it is.
//!
//! **Length.** A sentiment row keeps the answer whole and truncates the sentence's end to fit the
//! sequence length (the tour's model has 64 positions: about 50 characters of sentence).

use crate::cpu::Rng;
use crate::data::{Batch, Batches, RatedSentence, Sentiment, Split, TokenDataset};
use crate::error::{Error, Result};
use crate::ops::cross_entropy::IGNORE;
use crate::tokenizer::{CharTokenizer, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Style,
    Sentiment,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Style => "style",
            Task::Sentiment => "sentiment",
        }
    }
}

/// `text` with each character the vocabulary lacks mapped (quotes → `'`, accented Latin letters
/// → plain) or dropped; returns the text and how many characters were dropped.
pub fn fit_to_vocab(text: &str, vocab: &CharTokenizer) -> (String, usize) {
    let known = |c: char| vocab.contains(c);
    let mut out = String::with_capacity(text.len());
    let mut dropped = 0;
    for c in text.chars() {
        let mapped = if known(c) { Some(c) } else { substitute(c).filter(|&m| known(m)) };
        match mapped {
            Some(m) => out.push(m),
            None => dropped += 1,
        }
    }
    (out, dropped)
}

/// The plain character a typographic or accented one stands for.
fn substitute(c: char) -> Option<char> {
    Some(match c {
        '"' | '\u{2018}' | '\u{2019}' | '\u{201C}' | '\u{201D}' | '`' | '\u{B4}' => '\'',
        '\u{2013}' | '\u{2014}' => '-',
        '\t' => ' ',
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'ç' => 'c',
        'è' | 'é' | 'ê' | 'ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' => 'i',
        'ñ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => 'o',
        'ù' | 'ú' | 'û' | 'ü' => 'u',
        'É' => 'E',
        _ => return None,
    })
}

/// Text the model's tokenizer can encode: [`fit_to_vocab`] for a char model, unchanged for BPE.
pub fn prepare(text: &str, tokenizer: &Tokenizer) -> (String, usize) {
    match tokenizer {
        Tokenizer::Char(chars) => fit_to_vocab(text, chars),
        Tokenizer::Gpt2(_) => (text.to_string(), 0),
    }
}

/// The style task's data: the sentences, a line each, as one token stream split 90/10.
pub fn style_dataset(
    sentences: &[RatedSentence],
    tokenizer: &Tokenizer,
) -> Result<(TokenDataset, usize)> {
    let text: String = sentences.iter().map(|s| format!("{}\n", s.text)).collect();
    let (text, dropped) = prepare(&text, tokenizer);
    Ok((TokenDataset::new(&tokenizer.encode(&text)?)?, dropped))
}

/// One labelled example, tokenized: `prompt` = `<sentence> =>`, then the answer.
#[derive(Clone, Debug)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
    pub sentiment: Sentiment,
}

/// The sentiment task's examples, split 80/10/10 (train, validation, test) after one seeded
/// shuffle, plus the answers' first tokens used to classify.
pub struct Examples {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub test: Vec<Example>,
    /// The answers' first tokens after their shared prefix (`p` and `n` for a char model): the
    /// two scores compared to classify.
    pub positive: u32,
    pub negative: u32,
    /// Characters the vocabulary could not take (see [`fit_to_vocab`]).
    pub dropped: usize,
}

/// What ends a sentiment prompt: ` =>`, or ` ::` for a vocabulary without `=` and `>`
/// (Shakespeare's has neither).
pub fn prompt_end(tokenizer: &Tokenizer) -> &'static str {
    if tokenizer.encode(" =>").is_ok() { " =>" } else { " ::" }
}

/// The two answers, " positive\n" and " negative\n", tokenized: the tokens they share in front
/// (a char model's space) belong to the prompt, so that each answer's first token decides it.
fn answers(tokenizer: &Tokenizer) -> Result<(Vec<u32>, [Vec<u32>; 2])> {
    let p = tokenizer.encode(" positive\n")?;
    let n = tokenizer.encode(" negative\n")?;
    let k = p.iter().zip(&n).take_while(|(a, b)| a == b).count();
    Ok((p[..k].to_vec(), [p[k..].to_vec(), n[k..].to_vec()]))
}

/// Tokenizes `sentences` as examples that fit `seq_len` positions (sentence end truncated).
pub fn encode_examples(
    sentences: &[RatedSentence],
    tokenizer: &Tokenizer,
    seq_len: usize,
) -> Result<(Vec<Example>, usize)> {
    let mut dropped = 0;
    let mut out = Vec::with_capacity(sentences.len());
    let end = prompt_end(tokenizer);
    let (shared, [positive, negative]) = answers(tokenizer)?;
    let mut tail = tokenizer.encode(end)?;
    tail.extend(&shared);
    for s in sentences {
        let (text, d) = prepare(s.text.trim(), tokenizer);
        dropped += d;
        let answer = match s.sentiment {
            Sentiment::Positive => positive.clone(),
            Sentiment::Negative => negative.clone(),
        };
        // A row holds prompt + answer − 1 inputs (the last answer token is only a target).
        let room = (seq_len + 1).checked_sub(tail.len() + answer.len()).filter(|&r| r > 0);
        let Some(room) = room else {
            return Err(Error::Input(format!(
                "sentiment task: a sequence length of {seq_len} leaves no room for a sentence \
                 before '{end} {}'",
                s.sentiment.as_str()
            )));
        };
        let mut prompt = tokenizer.encode(&text)?;
        prompt.truncate(room);
        prompt.extend(&tail);
        out.push(Example { prompt, answer, sentiment: s.sentiment });
    }
    Ok((out, dropped))
}

impl Examples {
    /// The movie sentences (or any rated sentences) as the sentiment task at `seq_len`.
    pub fn new(sentences: &[RatedSentence], tokenizer: &Tokenizer, seq_len: usize) -> Result<Self> {
        let (mut all, dropped) = encode_examples(sentences, tokenizer, seq_len)?;
        if all.len() < 10 {
            return Err(Error::Input(format!(
                "sentiment task: {} labelled sentences; at least 10 are needed for the 80/10/10 split",
                all.len()
            )));
        }
        let mut rng = Rng::new(0x5E17_1AE5);
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i + 1)); // Fisher–Yates with a fixed seed
        }
        let n_test = all.len() / 10;
        let test = all.split_off(all.len() - n_test);
        let val = all.split_off(all.len() - n_test);
        let (_, [p, n]) = answers(tokenizer)?;
        let (positive, negative) = (p[0], n[0]);
        Ok(Examples { train: all, val, test, positive, negative, dropped })
    }

    fn split(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }
}

/// Rows of (inputs, targets) for `examples`, each padded to `seq_len` (inputs with token 0,
/// targets with IGNORE). The one target of a row is the answer's first token, the one that
/// decides it: the rest of the answer follows from it and would only dilute the loss.
pub fn rows(examples: &[&Example], seq_len: usize) -> Batch {
    let (mut inputs, mut targets) = (vec![], vec![]);
    for e in examples {
        let full: Vec<u32> = e.prompt.iter().chain(&e.answer).copied().collect();
        for t in 0..seq_len {
            inputs.push(full.get(t).copied().filter(|_| t + 1 < full.len()).unwrap_or(0));
            let decides = t + 1 == e.prompt.len(); // predicts the answer's first token
            targets.push(if decides { full[t + 1] } else { IGNORE });
        }
    }
    Batch { batch: examples.len(), seq_len, inputs, targets }
}

impl Batches for Examples {
    fn sample(&self, split: Split, batch: usize, seq_len: usize, rng: &mut Rng) -> Result<Batch> {
        let pool = self.split(split);
        if pool.is_empty() || batch == 0 {
            return Err(Error::Input(format!("sentiment task: no {split:?} examples to sample")));
        }
        if let Some(e) = pool.iter().find(|e| e.prompt.len() + e.answer.len() > seq_len + 1) {
            return Err(Error::Input(format!(
                "sentiment task: an example of {} tokens does not fit --seq-len {seq_len}",
                e.prompt.len() + e.answer.len()
            )));
        }
        let picked: Vec<&Example> = (0..batch).map(|_| &pool[rng.below(pool.len())]).collect();
        Ok(rows(&picked, seq_len))
    }

    /// The two answers' deciding tokens: the loss is a two-way classifier's (see the header).
    fn classes(&self) -> Option<Vec<u32>> {
        Some(vec![self.positive, self.negative])
    }
}

/// The model's answer for each example: positive when the next-token score of " positive"'s
/// first token beats " negative"'s after the prompt (one forward per 64 examples, no graph).
pub fn predict(
    model: &crate::model::gpt2::Gpt2,
    examples: &[Example],
    positive: u32,
    negative: u32,
) -> Result<Vec<Sentiment>> {
    use crate::model::gpt2::ForwardOptions;
    use crate::tensor::Tensor;
    let _g = crate::autograd::no_grad();
    let v = model.config.vocab_size;
    let mut out = Vec::with_capacity(examples.len());
    // 64 rows per forward; the head runs at each prompt's last position only (`forward_at`):
    // (B, V) logits, not (B, T, V), which for a BPE vocabulary are most of the work.
    for part in examples.chunks(64) {
        let t = part.iter().map(|e| e.prompt.len()).max().unwrap_or(1);
        let mut ids = vec![0u32; part.len() * t]; // (B, T), right-padded
        for (r, e) in part.iter().enumerate() {
            ids[r * t..r * t + e.prompt.len()].copy_from_slice(&e.prompt);
        }
        model.check_ids(&ids, &[part.len(), t], 0)?;
        let ids = Tensor::from_u32(model.gpu(), &ids, &[part.len(), t])?;
        let last: Vec<usize> =
            part.iter().enumerate().map(|(r, e)| r * t + e.prompt.len() - 1).collect();
        let logits = model.forward_at(&ids, &last, &ForwardOptions::default())?.to_vec()?; // (B, V)
        for (r, _) in part.iter().enumerate() {
            let (p, n) = (logits[r * v + positive as usize], logits[r * v + negative as usize]);
            out.push(if p > n { Sentiment::Positive } else { Sentiment::Negative });
        }
    }
    Ok(out)
}

/// Fraction of `examples` whose [`predict`]ion is their label.
pub fn accuracy(
    model: &crate::model::gpt2::Gpt2,
    examples: &[Example],
    positive: u32,
    negative: u32,
) -> Result<f64> {
    if examples.is_empty() {
        return Err(Error::Input("accuracy over no examples".into()));
    }
    let predicted = predict(model, examples, positive, negative)?;
    let right = predicted.iter().zip(examples).filter(|(p, e)| **p == e.sentiment).count();
    Ok(right as f64 / examples.len() as f64)
}

/// The share of the most frequent label: what always answering it scores.
pub fn majority(examples: &[Example]) -> f64 {
    let pos = examples.iter().filter(|e| e.sentiment == Sentiment::Positive).count();
    pos.max(examples.len() - pos) as f64 / examples.len().max(1) as f64
}
