//! Next-token sampling from logits.
//!
//! Order of operations (the order llama.cpp and HF apply them in):
//! 0. with an allowed-token mask (a grammar's, `sample_masked`), every token outside it
//!    gets `-inf`;
//! 1. banned tokens get `-inf`;
//! 2. repetition penalty, HF semantics (`RepetitionPenaltyLogitsProcessor`): for each
//!    distinct token in `history`, a positive logit is divided by the penalty and a
//!    negative one multiplied by it;
//! 3. presence penalty (OpenAI semantics): subtracted once per distinct token in
//!    `history`;
//! 4. `temperature == 0` → greedy argmax;
//! 5. otherwise logits / temperature, top-k, softmax over what is left, top-p (smallest
//!    prefix by probability whose mass reaches `top_p`), min-p (drop tokens whose
//!    probability is below `min_p` × the top probability), renormalise, draw.
//!
//! Invariants:
//! - `sample` writes steps 1-3 into `logits` in place (the caller's buffer is scratch).
//! - Ties are broken toward the lowest token id, in greedy and in the candidate order,
//!   so top-k = 1 and a tiny top-p both give exactly the greedy token.
//! - A banned token or a non-finite logit is never chosen, unless every token is banned
//!   or non-finite, in which case the lowest id that is not banned is returned (0 when
//!   all are banned).
//! - A token outside the allowed mask is never chosen, whatever the temperature, top-k,
//!   top-p or min-p, and whatever the logits: when no allowed token has a finite logit,
//!   the lowest allowed id that is not banned is returned (the lowest allowed id when all
//!   are banned). The mask is a bitset over the vocabulary in 32-bit words (bit `i % 32`
//!   of word `i / 32`, llguidance's `SimpleVob` layout); ids past its end are outside.
//! - The same seed and the same inputs give the same token sequence; with `seed: None`
//!   the seed comes from the clock. `next_uniform` takes from the same generator (the
//!   uniform of a draw made on the GPU), so a seeded GPU run repeats too.
//! - With a vocabulary of ~131k, no full sort happens when `top_k` is set
//!   (`select_nth_unstable`), and top-p sorts only a bounded head of the candidates
//!   unless that head holds less than `top_p` of the mass.
//!
//! Log-probabilities (`sample_with_logprobs`, what `logprobs` / `top_logprobs` of
//! `nemo serve` report) are the log-softmax of the model's logits with step 0 applied and
//! nothing after it: vLLM's default (`logprobs_mode = raw_logprobs`, where the structured
//! output bitmask is applied to the logits before its sampler and the penalties,
//! temperature and filters after). So they are the model's own numbers, the same at every
//! temperature (as OpenAI's are), which is what a client computing a perplexity, a
//! confidence or a classifier score from them expects; the distribution a token was drawn
//! from is a function of them and of the sampling parameters the client sent. Under a
//! grammar they are over what the grammar allowed (the chosen token's probability among
//! the tokens it could have been; a disallowed token is never an alternative). The bans
//! (`banned`: the end of thinking before its minimum) and the penalties do not change
//! them, as vLLM's `min_tokens` and penalties do not change its raw ones: with neither,
//! a greedy token is the most likely alternative. Ln Z is summed in f64; a token outside
//! the mask has `-inf`. Nothing of this is computed unless asked for.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::SamplingParams;

/// How many of the best candidates top-p sorts before falling back to a full sort.
const TOP_P_HEAD: usize = 1024;

/// Picks tokens according to [`SamplingParams`] with its own seeded PRNG.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256StarStar,
    /// Scratch: (token id, logit then probability).
    candidates: Vec<(u32, f32)>,
    /// Scratch: distinct tokens of the history.
    seen: Vec<u32>,
    /// Scratch: the masked logits before bans and penalties (`sample_with_logprobs`).
    raw: Vec<f32>,
}

/// One step's log-probabilities (see the module doc for the distribution).
#[derive(Clone, Debug, PartialEq)]
pub struct StepLogprobs {
    /// The chosen token's.
    pub chosen: f32,
    /// The most likely tokens, best first (ties → lowest id), as many as asked for (fewer
    /// when fewer tokens have a finite logit).
    pub top: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        });
        Self {
            params,
            rng: Xoshiro256StarStar::seed_from_u64(seed),
            candidates: Vec::new(),
            seen: Vec::new(),
            raw: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next uniform number in [0, 1) from this sampler's seeded generator (24 bits,
    /// so it is exact as an f32 and never rounds up to 1): what a draw made elsewhere (the
    /// GPU's `sampling::draw`) takes as its `u`, so a seeded run is reproducible there too.
    pub fn next_uniform(&mut self) -> f32 {
        (self.rng.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Chooses the next token; `history` is the context the penalties look at.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], banned: &[u32]) -> u32 {
        self.sample_masked(logits, history, banned, None)
    }

    /// `sample` restricted to the tokens set in `allowed` (see the module doc).
    pub fn sample_masked(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        banned: &[u32],
        allowed: Option<&[u32]>,
    ) -> u32 {
        if let Some(mask) = allowed {
            apply_mask(logits, mask);
        }
        self.draw(logits, history, banned, allowed)
    }

    /// `sample_masked`, and the step's log-probabilities: the chosen token's and the `top`
    /// most likely ones' (see the module doc). The same token as `sample_masked` draws
    /// with the same generator state.
    pub fn sample_with_logprobs(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        banned: &[u32],
        allowed: Option<&[u32]>,
        top: usize,
    ) -> (u32, StepLogprobs) {
        if let Some(mask) = allowed {
            apply_mask(logits, mask);
        }
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        raw.extend_from_slice(logits);
        let id = self.draw(logits, history, banned, allowed);
        let ln_z = log_normalizer(&raw);
        let logprob = |l: f32| match ln_z {
            Some(z) if l.is_finite() => (f64::from(l) - z) as f32,
            _ => f32::NEG_INFINITY,
        };
        let lp = StepLogprobs {
            chosen: raw
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&l| logprob(l)),
            top: most_likely(&raw, top)
                .into_iter()
                .map(|(i, l)| (i, logprob(l)))
                .collect(),
        };
        self.raw = raw;
        (id, lp)
    }

    /// Steps 1-5 on logits the mask (if any) has been applied to.
    fn draw(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        banned: &[u32],
        allowed: Option<&[u32]>,
    ) -> u32 {
        let greedy = |logits: &[f32]| greedy(logits, banned, allowed);
        for &id in banned {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        self.apply_penalties(logits, history);

        let p = &self.params;
        if p.temperature.is_nan() || p.temperature <= 0.0 {
            return greedy(logits);
        }

        let inv_t = 1.0 / p.temperature;
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if cands.is_empty() {
            return greedy(logits);
        }

        // Top-k: keep the k best (ties → lower id) without sorting the rest.
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_score_desc);
            cands.truncate(p.top_k);
        }

        // Softmax over the survivors.
        let max = cands.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let mut sum = 0.0f64;
        for c in cands.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += f64::from(c.1);
        }
        let inv_sum = (1.0 / sum) as f32;
        for c in cands.iter_mut() {
            c.1 *= inv_sum;
        }

        // Top-p over the distribution normalised above.
        if p.top_p < 1.0 {
            top_p_filter(cands, p.top_p.max(0.0));
        }

        // Min-p: relative to the top probability (kept by top-p whatever it does).
        if p.min_p > 0.0 {
            let top = cands.iter().fold(0.0f32, |m, c| m.max(c.1));
            let threshold = p.min_p * top;
            cands.retain(|c| c.1 >= threshold);
        }

        // Draw from the renormalised remainder.
        let total: f64 = cands.iter().map(|c| f64::from(c.1)).sum();
        let mut r = self.rng.next_f64() * total;
        for c in cands.iter() {
            r -= f64::from(c.1);
            if r < 0.0 {
                return c.0;
            }
        }
        // Rounding left a sliver: take the last candidate with mass.
        cands
            .iter()
            .rev()
            .find(|c| c.1 > 0.0)
            .or(cands.last())
            .map_or_else(|| greedy(logits), |c| c.0)
    }

    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let (rep, presence) = (self.params.repetition_penalty, self.params.presence_penalty);
        let rep_on = rep != 1.0 && rep > 0.0;
        let presence_on = presence != 0.0;
        if history.is_empty() || !(rep_on || presence_on) {
            return;
        }
        self.seen.clear();
        self.seen.extend_from_slice(history);
        self.seen.sort_unstable();
        self.seen.dedup();
        for &id in &self.seen {
            let Some(l) = logits.get_mut(id as usize) else {
                continue;
            };
            if rep_on {
                *l = if *l > 0.0 { *l / rep } else { *l * rep };
            }
            if presence_on {
                *l -= presence;
            }
        }
    }
}

/// Descending by score, then ascending by id: a total order on finite scores.
fn by_score_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keeps the smallest best-first prefix whose probability reaches `top_p` (at least one
/// token). Sorts only the best `TOP_P_HEAD` unless they fall short of `top_p`.
fn top_p_filter(cands: &mut Vec<(u32, f32)>, top_p: f32) {
    if cands.len() > TOP_P_HEAD {
        cands.select_nth_unstable_by(TOP_P_HEAD - 1, by_score_desc);
        let head = &mut cands[..TOP_P_HEAD];
        head.sort_unstable_by(by_score_desc);
        if let Some(keep) = prefix_reaching(head, top_p) {
            cands.truncate(keep);
            return;
        }
    }
    cands.sort_unstable_by(by_score_desc);
    let keep = prefix_reaching(cands, top_p).unwrap_or(cands.len());
    cands.truncate(keep);
}

/// Length of the shortest prefix with mass ≥ `top_p`, if there is one.
fn prefix_reaching(sorted: &[(u32, f32)], top_p: f32) -> Option<usize> {
    let mut cum = 0.0f32;
    for (i, c) in sorted.iter().enumerate() {
        cum += c.1;
        if cum >= top_p {
            return Some(i + 1);
        }
    }
    None
}

/// ln Σ exp(l) over the finite logits (max-shifted, summed in f64); None when none is.
fn log_normalizer(logits: &[f32]) -> Option<f64> {
    let max = logits
        .iter()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    if !max.is_finite() {
        return None;
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .sum();
    Some(f64::from(max) + sum.ln())
}

/// The `n` largest finite logits with their ids, best first, ties → lowest id; one pass
/// with a sorted buffer of at most `n` (n is small: OpenAI allows 20).
fn most_likely(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() || top.len() == n && top.last().is_some_and(|t| l <= t.1) {
            continue;
        }
        // After the equal ones: they have lower ids.
        let at = top.partition_point(|t| t.1 >= l);
        top.insert(at, (i as u32, l));
        top.truncate(n);
    }
    top
}

/// Sets every logit outside `mask` to `-inf` (see the module doc for the layout).
fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

fn is_allowed(mask: Option<&[u32]>, id: u32) -> bool {
    mask.is_none_or(|m| {
        m.get(id as usize / 32)
            .is_some_and(|w| w & (1 << (id % 32)) != 0)
    })
}

/// Argmax over finite logits, ties → lowest id; see the module doc for the all-banned and
/// all-masked cases.
fn greedy(logits: &[f32], banned: &[u32], allowed: Option<&[u32]>) -> u32 {
    let mut best: Option<(u32, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i as u32, l));
        }
    }
    let mut candidates = (0..logits.len() as u32).filter(|id| is_allowed(allowed, *id));
    match best {
        Some((id, _)) => id,
        None => candidates
            .clone()
            .find(|id| !banned.contains(id))
            .or_else(|| candidates.next())
            .unwrap_or(0),
    }
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64 as its authors advise.
#[derive(Clone, Debug)]
struct Xoshiro256StarStar {
    s: [u64; 4],
}

impl Xoshiro256StarStar {
    fn seed_from_u64(seed: u64) -> Self {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [splitmix(), splitmix(), splitmix(), splitmix()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    /// A pseudo-random logit vector of `n` entries.
    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Xoshiro256StarStar::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.next_f64() as f32) * 8.0 - 4.0)
            .collect()
    }

    fn argmax(l: &[f32]) -> u32 {
        greedy(l, &[], None)
    }

    #[test]
    fn xoshiro_matches_the_reference_sequence() {
        // Reference: xoshiro256** from state [1, 2, 3, 4] (Vigna's C code).
        let mut rng = Xoshiro256StarStar { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240]);
    }

    #[test]
    fn greedy_picks_the_argmax_and_lowest_id_on_ties() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 1.9], &[], &[]), 1);
        assert_eq!(s.sample(&mut [0.5, 3.0, 3.0, 1.0], &[], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NAN, 1.0, 0.0], &[], &[]), 1);
    }

    #[test]
    fn same_seed_and_inputs_give_the_same_tokens() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.9,
            seed: Some(1234),
            ..SamplingParams::default()
        };
        let base = logits(131_072, 3);
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..20)
                .map(|_| s.sample(&mut base.clone(), &[], &[]))
                .collect::<Vec<u32>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p));
        let distinct: std::collections::BTreeSet<u32> = a.iter().copied().collect();
        assert!(
            distinct.len() > 1,
            "temperature 1 should not be deterministic per step"
        );
        let other = SamplingParams {
            seed: Some(99),
            ..p
        };
        assert_ne!(a, run(&other));
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.5,
            top_k: 1,
            ..params(1.0)
        });
        for seed in 0..20 {
            let l = logits(5000, seed);
            assert_eq!(s.sample(&mut l.clone(), &[], &[]), argmax(&l));
        }
        // Ties still resolve to the lowest id.
        assert_eq!(s.sample(&mut [1.0, 5.0, 0.0, 5.0], &[], &[]), 1);
    }

    #[test]
    fn tiny_top_p_equals_greedy() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            ..params(1.0)
        });
        for seed in 0..20 {
            // Large enough to go through the bounded-head path.
            let l = logits(20_000, seed);
            assert_eq!(s.sample(&mut l.clone(), &[], &[]), argmax(&l));
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_the_mass() {
        // Probabilities 0.5, 0.3, 0.2 (logits = ln p).
        let base = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.75,
            ..params(1.0)
        });
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            seen[s.sample(&mut base.clone(), &[], &[]) as usize] += 1;
        }
        assert_eq!(
            seen[2], 0,
            "token outside the top-p set was drawn: {seen:?}"
        );
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn top_p_falls_back_to_a_full_sort_when_the_head_is_not_enough() {
        // A flat distribution over 4000 tokens: the best 1024 hold ~25% of the mass.
        let flat = vec![0.0f32; 4000];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..params(1.0)
        });
        let mut max_id = 0;
        for _ in 0..3000 {
            max_id = max_id.max(s.sample(&mut flat.clone(), &[], &[]));
        }
        // Ties sort by id, so the kept prefix is ids 0..2000.
        assert!((1024..2000).contains(&max_id), "max id {max_id}");
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_top() {
        // Probabilities ∝ 1.0, 0.5, 0.05: min_p 0.1 removes the last.
        let base = [0.0f32, 0.5f32.ln(), 0.05f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.1,
            ..params(1.0)
        });
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            seen[s.sample(&mut base.clone(), &[], &[]) as usize] += 1;
        }
        assert_eq!(seen[2], 0, "{seen:?}");
        assert!(seen[1] > 500, "{seen:?}");
    }

    #[test]
    fn repetition_penalty_moves_greedy_off_a_repeated_token() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        });
        // 3.0 / 2 = 1.5 < 2.0
        let mut l = [3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut l, &[0, 0, 0], &[]), 1);
        assert_eq!(l, [1.5, 2.0, -1.0], "applied once per distinct token");
        // A negative logit is multiplied, pushing it further down.
        let mut l = [-1.0, -1.5];
        assert_eq!(s.sample(&mut l, &[0], &[]), 1);
        assert_eq!(l[0], -2.0);
    }

    #[test]
    fn presence_penalty_subtracts_once_per_seen_token() {
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 1.0,
            ..params(0.0)
        });
        let mut l = [2.0, 1.5, 0.0];
        assert_eq!(s.sample(&mut l, &[0, 0, 2], &[]), 1);
        assert_eq!(l, [1.0, 1.5, -1.0]);
    }

    #[test]
    fn banned_tokens_are_never_chosen() {
        let mut s = Sampler::new(params(2.0));
        let base = [5.0f32, 4.9, 0.0, 4.8];
        for _ in 0..500 {
            let t = s.sample(&mut base.clone(), &[], &[0, 3]);
            assert!(t == 1 || t == 2, "drew banned {t}");
        }
        let mut g = Sampler::new(params(0.0));
        assert_eq!(g.sample(&mut base.clone(), &[], &[0]), 1);
        // Everything banned: the lowest id not in the list (none here → 0).
        assert_eq!(g.sample(&mut [1.0, 2.0], &[], &[1, 0]), 0);
        assert_eq!(
            g.sample(&mut [f32::NEG_INFINITY, f32::NEG_INFINITY], &[], &[0]),
            1
        );
        // Out-of-range ids are ignored.
        assert_eq!(g.sample(&mut [1.0, 2.0], &[], &[99]), 1);
    }

    /// A mask allowing exactly `ids` in a vocabulary of `n`.
    fn mask_of(n: usize, ids: &[u32]) -> Vec<u32> {
        let mut m = vec![0u32; n.div_ceil(32)];
        for &id in ids {
            m[id as usize / 32] |= 1 << (id % 32);
        }
        m
    }

    #[test]
    fn masked_out_tokens_are_never_chosen_at_any_temperature() {
        let n = 5000;
        // Allowed: a few ids spread over the words, none of them the argmax.
        let allowed_ids = [3u32, 31, 32, 33, 700, 4095, 4999];
        let mask = mask_of(n, &allowed_ids);
        for (t, top_k, top_p, min_p) in [
            (0.0, 0, 1.0, 0.0),
            (0.7, 0, 1.0, 0.0),
            (1.0, 0, 1.0, 0.0),
            (2.5, 0, 1.0, 0.0),
            (1.0, 2, 1.0, 0.0),
            (1.0, 40, 1.0, 0.0),
            (1.0, 0, 0.9, 0.0),
            (1.0, 0, 1e-6, 0.0),
            (1.0, 0, 1.0, 0.5),
            (1.5, 50, 0.95, 0.05),
        ] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_k,
                top_p,
                min_p,
                repetition_penalty: 1.3,
                seed: Some(17),
                ..SamplingParams::default()
            });
            let mut seen = std::collections::BTreeSet::new();
            for seed in 0..200 {
                let mut l = logits(n, seed);
                // The best tokens are all outside the mask.
                l[0] = 50.0;
                l[1] = 49.0;
                let id = s.sample_masked(&mut l, &[3, 0, 1], &[], Some(&mask));
                assert!(
                    allowed_ids.contains(&id),
                    "t {t} top_k {top_k} top_p {top_p} min_p {min_p}: drew masked {id}"
                );
                seen.insert(id);
            }
            if t >= 1.0 && top_k != 2 && top_p > 0.5 && min_p < 0.1 {
                assert!(seen.len() > 1, "t {t}: only {seen:?} drawn");
            }
        }
    }

    #[test]
    fn mask_and_bans_together_and_the_all_masked_fallback() {
        let mask = mask_of(8, &[2, 5, 6]);
        let mut g = Sampler::new(params(0.0));
        // The mask and the bans both apply.
        let l = [9.0f32, 8.0, 1.0, 7.0, 6.0, 2.0, 3.0, 10.0];
        assert_eq!(g.sample_masked(&mut l.clone(), &[], &[6], Some(&mask)), 5);
        // No allowed token has a finite logit: the lowest allowed one that is not banned.
        let inf = [
            f32::NAN,
            1.0,
            f32::NEG_INFINITY,
            1.0,
            1.0,
            f32::NAN,
            f32::NAN,
            1.0,
        ];
        assert_eq!(g.sample_masked(&mut inf.clone(), &[], &[2], Some(&mask)), 5);
        assert_eq!(
            g.sample_masked(&mut inf.clone(), &[], &[2, 5, 6], Some(&mask)),
            2
        );
        // Ids past the mask's end are outside it.
        let short = mask_of(32, &[1]);
        let mut wide = vec![0.0f32; 100];
        wide[90] = 5.0;
        assert_eq!(g.sample_masked(&mut wide, &[], &[], Some(&short)), 1);
        // With temperature too.
        let mut s = Sampler::new(params(1.0));
        for _ in 0..200 {
            let t = s.sample_masked(&mut l.clone(), &[], &[], Some(&mask));
            assert!([2, 5, 6].contains(&t), "drew masked {t}");
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let base = [1.0f32, 0.0, -1.0];
        let temperature = 0.8;
        let mut s = Sampler::new(SamplingParams {
            temperature,
            seed: Some(2024),
            ..SamplingParams::default()
        });
        let n = 30_000;
        let mut counts = [0f64; 3];
        for _ in 0..n {
            counts[s.sample(&mut base.clone(), &[], &[]) as usize] += 1.0;
        }
        let exps: Vec<f64> = base
            .iter()
            .map(|&l| f64::from(l / temperature).exp())
            .collect();
        let z: f64 = exps.iter().sum();
        let chi2: f64 = (0..3)
            .map(|i| {
                let expected = n as f64 * exps[i] / z;
                (counts[i] - expected).powi(2) / expected
            })
            .sum();
        // 2 degrees of freedom: p = 0.001 at 13.8.
        assert!(chi2 < 13.8, "chi2 {chi2}, counts {counts:?}");
    }

    #[test]
    fn next_uniform_is_reproducible_from_the_seed_and_in_the_unit_interval() {
        let draws = |seed: u64| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                ..params(1.0)
            });
            (0..10_000).map(|_| s.next_uniform()).collect::<Vec<f32>>()
        };
        let a = draws(11);
        assert_eq!(a, draws(11));
        assert_ne!(a, draws(12));
        assert!(a.iter().all(|u| (0.0..1.0).contains(u)), "outside [0, 1)");
        // The top 24 bits of xoshiro256** seeded as `Sampler::new` seeds it.
        let mut rng = Xoshiro256StarStar::seed_from_u64(11);
        let want = (rng.next_u64() >> 40) as f64 / (1u64 << 24) as f64;
        assert_eq!(f64::from(a[0]), want);
        // Spread over the interval: the mean of 10k uniforms is 0.5 ± 0.003 (σ = 0.0029).
        let mean = a.iter().map(|u| f64::from(*u)).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
        // The largest value the generator can give stays below 1 as an f32.
        assert!(((u64::MAX >> 40) as f32 * (1.0 / (1u64 << 24) as f32)) < 1.0);
    }

    fn close(got: f32, want: f64) -> bool {
        (f64::from(got) - want).abs() < 1e-6
    }

    #[test]
    fn logprobs_are_the_log_softmax_of_the_logits() {
        // ln(e^1 + e^2 + e^3 + e^0) = 3.4401896985611953 (by hand, and in Python).
        let base = [1.0f32, 2.0, 3.0, 0.0];
        let mut s = Sampler::new(params(0.0));
        let (id, lp) = s.sample_with_logprobs(&mut base.clone(), &[], &[], None, 2);
        assert_eq!(id, 2);
        assert!(close(lp.chosen, -0.4401896985611953), "{lp:?}");
        assert_eq!(lp.top.len(), 2);
        assert_eq!((lp.top[0].0, lp.top[1].0), (2, 1));
        assert!(close(lp.top[0].1, -0.4401896985611953), "{lp:?}");
        assert!(close(lp.top[1].1, -1.4401896985611953), "{lp:?}");
        // More alternatives than tokens: all of them, best first.
        let (_, lp) = s.sample_with_logprobs(&mut base.clone(), &[], &[], None, 20);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![2, 1, 0, 3]);
        assert!(close(lp.top[3].1, -3.4401896985611953), "{lp:?}");
        // None asked for: none computed.
        let (_, lp) = s.sample_with_logprobs(&mut base.clone(), &[], &[], None, 0);
        assert!(lp.top.is_empty());
        // Ties: the lower id first; ln(e / (2e + 1)) = -0.8619948040582511.
        let (id, lp) = s.sample_with_logprobs(&mut [1.0, 1.0, 0.0], &[], &[], None, 3);
        assert_eq!(id, 0);
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(close(lp.chosen, -0.8619948040582511), "{lp:?}");
        assert!(close(lp.top[2].1, -1.861994804058251), "{lp:?}");
    }

    #[test]
    fn logprobs_under_a_mask_are_over_the_allowed_tokens() {
        // Token 2 is outside the mask: ln(e^1 + e^2 + e^0) = 2.40760596444438.
        let mask = mask_of(4, &[0, 1, 3]);
        let mut s = Sampler::new(params(0.0));
        let (id, lp) = s.sample_with_logprobs(&mut [1.0, 2.0, 3.0, 0.0], &[], &[], Some(&mask), 4);
        assert_eq!(id, 1);
        assert!(close(lp.chosen, -0.40760596444438013), "{lp:?}");
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 0, 3]
        );
        assert!(close(lp.top[2].1, -2.40760596444438), "{lp:?}");
        // Nothing allowed is finite: the fallback token, with probability 0.
        let mask = mask_of(3, &[1]);
        let (id, lp) =
            s.sample_with_logprobs(&mut [1.0, f32::NEG_INFINITY, 0.0], &[], &[], Some(&mask), 2);
        assert_eq!(id, 1);
        assert_eq!(lp.chosen, f32::NEG_INFINITY);
        assert!(lp.top.is_empty());
    }

    #[test]
    fn logprobs_ignore_penalties_bans_and_temperature() {
        let base = [1.0f32, 2.0, 3.0, 0.0];
        // The penalty moves greedy to token 1 (3 / 2 < 2); its logprob is the model's.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0)
        });
        let (id, lp) = s.sample_with_logprobs(&mut base.clone(), &[2], &[], None, 1);
        assert_eq!(id, 1);
        assert!(close(lp.chosen, -1.4401896985611953), "{lp:?}");
        assert_eq!(lp.top[0].0, 2);
        // A ban likewise.
        let mut g = Sampler::new(params(0.0));
        let (id, lp) = g.sample_with_logprobs(&mut base.clone(), &[], &[2], None, 1);
        assert_eq!(id, 1);
        assert!(close(lp.chosen, -1.4401896985611953), "{lp:?}");
        // Any temperature: the same numbers, and the same draws as `sample_masked`.
        let l = logits(5000, 9);
        let want = {
            let mut g = Sampler::new(params(0.0));
            g.sample_with_logprobs(&mut l.clone(), &[], &[], None, 5)
                .1
                .top
        };
        let p = SamplingParams {
            temperature: 1.3,
            top_k: 40,
            seed: Some(5),
            ..SamplingParams::default()
        };
        let (mut a, mut b) = (Sampler::new(p.clone()), Sampler::new(p));
        for _ in 0..50 {
            let (id, lp) = a.sample_with_logprobs(&mut l.clone(), &[], &[], None, 5);
            assert_eq!(id, b.sample(&mut l.clone(), &[], &[]));
            assert_eq!(lp.top, want);
            let chosen = want.iter().find(|t| t.0 == id).map(|t| t.1);
            if let Some(c) = chosen {
                assert_eq!(lp.chosen, c);
            }
            assert!(lp.chosen <= 0.0);
        }
    }

    #[test]
    fn default_params_are_greedy_and_neutral() {
        let p = SamplingParams::default();
        assert_eq!(p.temperature, 0.0);
        let mut s = Sampler::new(p);
        let l = logits(1000, 5);
        assert_eq!(s.sample(&mut l.clone(), &[1, 2, 3], &[]), argmax(&l));
        let json: SamplingParams = serde_json::from_str(r#"{"temperature": 0.6}"#).unwrap();
        assert_eq!(json.top_p, 1.0);
    }
}
