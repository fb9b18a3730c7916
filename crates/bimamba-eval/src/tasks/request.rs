//! From strings to token requests, with lm-evaluation-harness 0.4's `_encode_pair` rule:
//!
//! ```text
//! n = trailing whitespace of context;  continuation = context[-n:] + continuation;  context = context[:-n]
//! whole_enc        = encode(context + continuation)      (no special tokens)
//! context_enc      = encode(context)
//! continuation_enc = whole_enc[len(context_enc):]
//! ```
//!
//! and lm-eval then scores `continuation_enc` after feeding `context_enc + continuation_enc`
//! (`inp = (context_enc + continuation_enc)[:-1]` in `_loglikelihood_tokens`). So the model is
//! always conditioned on `context_enc` itself, even when BPE merges across the boundary and
//! `whole_enc` does not start with `context_enc`: such a "boundary merge" changes which tokens
//! count as the continuation, never what the model is fed first. That is why one state after
//! `context_enc` serves every choice exactly; merges are counted and reported, not re-scored.
//!
//! An empty context is replaced by one prefix token (the end-of-text id), as lm-eval does.

use bimamba_text::Tokenizer;
use rayon::prelude::*;

use super::data::{ChoiceDoc, LambadaDoc, PartialDoc};
use super::TaskError;

/// One `(context, continuation)` pair after `_encode_pair`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPair {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
    /// `whole_enc` did not start with `context_enc` (BPE merged across the boundary).
    pub merged: bool,
}

/// A context encoded once with every continuation to score after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Non-empty.
    pub context: Vec<u32>,
    /// Each non-empty.
    pub continuations: Vec<Vec<u32>>,
    /// Continuations whose pair was a boundary merge.
    pub merges: usize,
}

/// Where a request came from, to name it in errors.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub task: &'a str,
    pub line: usize,
    pub id: &'a str,
}

/// lm-eval's `_encode_pair`; `prefix` stands in for an empty context (lm-eval: the EOT id).
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
    prefix: Option<u32>,
    at: Origin,
) -> Result<EncodedPair, TaskError> {
    let kept = context.trim_end();
    let (context, continuation) = if kept.len() < context.len() {
        (kept, format!("{}{continuation}", &context[kept.len()..]))
    } else {
        (context, continuation.to_string())
    };
    let req_err =
        |detail: String| TaskError::Request { task: at.task.to_string(), line: at.line, id: at.id.to_string(), detail };
    if context.is_empty() {
        let prefix = prefix.ok_or_else(|| {
            req_err("the context is empty and the tokenizer has no end-of-text token to stand in for it".into())
        })?;
        let continuation = tok.encode(&continuation)?;
        if continuation.is_empty() {
            return Err(req_err(format!("the continuation {continuation:?} encodes to no tokens")));
        }
        return Ok(EncodedPair { context: vec![prefix], continuation, merged: false });
    }
    let whole = tok.encode(&format!("{context}{continuation}"))?;
    let context_enc = tok.encode(context)?;
    let merged = !whole.starts_with(&context_enc);
    let continuation_enc = whole.get(context_enc.len()..).unwrap_or(&[]).to_vec();
    if continuation_enc.is_empty() {
        return Err(req_err(format!(
            "the continuation {continuation:?} gets no tokens of its own: `{context}{continuation}` encodes to {} tokens, the context alone to {}",
            whole.len(),
            context_enc.len()
        )));
    }
    if context_enc.is_empty() {
        return Err(req_err(format!("the context {context:?} encodes to no tokens")));
    }
    Ok(EncodedPair { context: context_enc, continuation: continuation_enc, merged })
}

/// One group per document: every choice after the document's context.
pub fn choice_groups(tok: &Tokenizer, task: &str, docs: &[ChoiceDoc]) -> Result<Vec<Group>, TaskError> {
    let prefix = tok.eos_id();
    docs.par_iter()
        .map(|d| {
            let at = Origin { task, line: d.line, id: &d.id };
            let pairs =
                d.choices.iter().map(|c| encode_pair(tok, &d.context, c, prefix, at)).collect::<Result<Vec<_>, _>>()?;
            // The context part of `_encode_pair` depends on the context string alone.
            let context = pairs[0].context.clone();
            debug_assert!(pairs.iter().all(|p| p.context == context));
            let merges = pairs.iter().filter(|p| p.merged).count();
            Ok(Group { context, continuations: pairs.into_iter().map(|p| p.continuation).collect(), merges })
        })
        .collect()
}

/// WinoGrande: one group per option (its own context), each with the shared continuation.
/// Groups of document i are `groups[offsets[i]..offsets[i + 1]]`.
pub fn partial_groups(tok: &Tokenizer, task: &str, docs: &[PartialDoc]) -> Result<(Vec<Group>, Vec<usize>), TaskError> {
    let prefix = tok.eos_id();
    let per_doc = docs
        .par_iter()
        .map(|d| {
            let at = Origin { task, line: d.line, id: &d.id };
            d.contexts
                .iter()
                .map(|c| single(encode_pair(tok, c, &d.continuation, prefix, at)?))
                .collect::<Result<Vec<_>, TaskError>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut offsets = vec![0];
    let mut groups = Vec::new();
    for g in per_doc {
        groups.extend(g);
        offsets.push(groups.len());
    }
    Ok((groups, offsets))
}

/// LAMBADA: one group per document, the target word as the only continuation.
pub fn lambada_groups(tok: &Tokenizer, task: &str, docs: &[LambadaDoc]) -> Result<Vec<Group>, TaskError> {
    let prefix = tok.eos_id();
    docs.par_iter()
        .map(|d| single(encode_pair(tok, &d.context, &d.target, prefix, Origin { task, line: d.line, id: &d.id })?))
        .collect()
}

fn single(p: EncodedPair) -> Result<Group, TaskError> {
    Ok(Group { context: p.context, continuations: vec![p.continuation], merges: usize::from(p.merged) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::testing::fixture_tokenizer;

    const AT: Origin = Origin { task: "test", line: 1, id: "0" };

    #[test]
    fn trailing_whitespace_moves_to_the_continuation() {
        let tok = fixture_tokenizer();
        let moved = encode_pair(&tok, "It is a truth ", "universally", None, AT).expect("encodes");
        let plain = encode_pair(&tok, "It is a truth", " universally", None, AT).expect("encodes");
        assert_eq!(moved, plain);
        assert_eq!(moved.context, tok.encode("It is a truth").expect("encodes"));
        // The continuation is the tail of the whole string's encoding.
        let whole = tok.encode("It is a truth universally").expect("encodes");
        assert_eq!(moved.continuation, whole[moved.context.len()..]);
        assert!(!moved.merged);
        // Several whitespace characters move together.
        let nl = encode_pair(&tok, "Answer:\n\n", "yes", None, AT).expect("encodes");
        assert_eq!(nl, encode_pair(&tok, "Answer:", "\n\nyes", None, AT).expect("encodes"));
    }

    #[test]
    fn boundary_merge_keeps_the_context_encoding_and_takes_the_tail() {
        let tok = fixture_tokenizer();
        // "Eliza" + "beth": the fixture BPE (trained on Pride and Prejudice) has "Elizabeth"-ish
        // merges, so the whole string does not start with the encoding of "Eliza" alone.
        let (ctx, cont) = ("Eliza", "beth");
        let whole = tok.encode(&format!("{ctx}{cont}")).expect("encodes");
        let ctx_enc = tok.encode(ctx).expect("encodes");
        assert!(!whole.starts_with(&ctx_enc), "the test needs a merge: {whole:?} vs {ctx_enc:?}");
        assert!(whole.len() > ctx_enc.len(), "and a non-empty tail: {whole:?} vs {ctx_enc:?}");
        let p = encode_pair(&tok, ctx, cont, None, AT).expect("encodes");
        assert!(p.merged);
        assert_eq!(p.context, ctx_enc);
        assert_eq!(p.continuation, whole[ctx_enc.len()..]);
    }

    #[test]
    fn empty_context_uses_the_prefix_token_and_empty_tails_are_errors() {
        let tok = fixture_tokenizer();
        let p = encode_pair(&tok, "", " the", Some(0), AT).expect("encodes");
        assert_eq!(p.context, vec![0]);
        assert_eq!(p.continuation, tok.encode(" the").expect("encodes"));
        let e = encode_pair(&tok, "  ", "", None, AT).expect_err("nothing to score").to_string();
        assert!(e.starts_with("test: line 1 (id 0): "), "{e}");
    }

    #[test]
    fn groups_share_the_context_encoding() {
        let tok = fixture_tokenizer();
        let doc = ChoiceDoc {
            line: 3,
            id: "x".into(),
            context: "Mr. Bennet said".into(),
            choices: vec![" yes".into(), " no, my dear".into()],
            gold: 0,
        };
        let g = choice_groups(&tok, "t", std::slice::from_ref(&doc)).expect("encodes");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].context, tok.encode("Mr. Bennet said").expect("encodes"));
        assert_eq!(g[0].continuations.len(), 2);
        let wg = PartialDoc {
            line: 4,
            id: "w".into(),
            contexts: vec!["Jane smiled at Lizzy so Jane".into(), "Jane smiled at Lizzy so Lizzy".into()],
            continuation: " was happy.".into(),
            gold: 1,
        };
        let (g, off) = partial_groups(&tok, "wg", &[wg.clone(), wg]).expect("encodes");
        assert_eq!(off, vec![0, 2, 4]);
        assert_eq!(g[0].continuations, g[1].continuations);
        assert_ne!(g[0].context, g[1].context);
    }
}
