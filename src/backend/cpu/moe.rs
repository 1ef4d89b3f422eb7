//! The MoE router on the CPU, with the layout and arguments of the CUDA kernel it is the
//! oracle of (kernels/moe.cu `moe_route_f32`, launcher `backend::cuda::moe::route`);
//! `model::moe` calls it (transformers `NemotronHTopkRouter`):
//!
//! ```text
//! scores  = sigmoid(logits)
//! choice  = scores + e_score_correction_bias          (for choosing only)
//! groups  = n_group groups of experts; a group's score = sum of its top-2 `choice`
//! keep the topk_group best groups, pick top_k experts by `choice` among them
//! weights = scores of the picked experts (uncorrected), / their sum if norm_topk_prob,
//!           × routed_scaling_factor
//! ```
//!
//! Ties go to the lower index (expert or group), as in the kernel. Picks are best first.

/// Router configuration (the config's names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Routing {
    pub n_routed_experts: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

/// Indices of the `k` largest values, ties to the lower index.
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|a, b| {
        v[*b]
            .partial_cmp(&v[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    });
    idx.truncate(k);
    idx
}

/// Routes `n` tokens: `logits` `[n, experts]` (the router GEMM's output), `bias`
/// `[experts]` → `ids` `[n, top_k]` (best first) and `weights` `[n, top_k]`. Panics on
/// buffers shorter than the shape needs, or a routing that does not split the experts
/// into its groups (a caller's bug: the config is validated at load).
pub fn route(
    r: &Routing,
    logits: &[f32],
    bias: &[f32],
    ids: &mut [u32],
    weights: &mut [f32],
    n: usize,
) {
    let (e, k) = (r.n_routed_experts, r.top_k);
    assert!(
        r.n_group >= 1 && e.is_multiple_of(r.n_group) && k <= e,
        "route: {e} experts in {} groups, top_k {k}",
        r.n_group
    );
    assert!(
        logits.len() >= n * e && bias.len() >= e && ids.len() >= n * k && weights.len() >= n * k,
        "route: buffers shorter than {n} tokens × {e} experts, top_k {k}"
    );
    let per = e / r.n_group;
    for t in 0..n {
        let scores: Vec<f32> = logits[t * e..(t + 1) * e]
            .iter()
            .map(|l| 1.0 / (1.0 + (-l).exp()))
            .collect();
        let mut choice: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
        if r.topk_group < r.n_group {
            let group_scores: Vec<f32> = (0..r.n_group)
                .map(|g| {
                    top_indices(&choice[g * per..(g + 1) * per], 2)
                        .iter()
                        .map(|i| choice[g * per + i])
                        .sum()
                })
                .collect();
            let keep = top_indices(&group_scores, r.topk_group);
            for g in 0..r.n_group {
                if !keep.contains(&g) {
                    choice[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
                }
            }
        }
        let picked = top_indices(&choice, k);
        let mut w: Vec<f32> = picked.iter().map(|i| scores[*i]).collect();
        if r.norm_topk_prob {
            let sum: f32 = w.iter().sum::<f32>() + 1e-20;
            w.iter_mut().for_each(|v| *v /= sum);
        }
        for (j, (id, wt)) in picked.iter().zip(&w).enumerate() {
            ids[t * k + j] = *id as u32;
            weights[t * k + j] = wt * r.routed_scaling_factor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(n_group: usize, topk_group: usize, top_k: usize, norm: bool) -> Routing {
        Routing {
            n_routed_experts: 4,
            n_group,
            topk_group,
            top_k,
            norm_topk_prob: norm,
            routed_scaling_factor: 2.0,
        }
    }

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    fn run(r: &Routing, probs: &[f32], bias: &[f32]) -> Vec<(u32, f32)> {
        let n = probs.len() / r.n_routed_experts;
        let logits: Vec<f32> = probs.iter().map(|p| logit(*p)).collect();
        let (mut ids, mut w) = (vec![0; n * r.top_k], vec![0.0; n * r.top_k]);
        route(r, &logits, bias, &mut ids, &mut w, n);
        ids.into_iter().zip(w).collect()
    }

    #[test]
    fn routing_chooses_with_the_bias_but_weighs_without_it() {
        let r = run(
            &routing(1, 1, 2, false),
            &[0.9, 0.8, 0.1, 0.2],
            &[0.0, 0.0, 0.0, 1.0],
        );
        // Expert 3 wins the choice through its bias; its weight is its own score × scale.
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 0]);
        assert!((r[0].1 - 0.2 * 2.0).abs() < 1e-5 && (r[1].1 - 0.9 * 2.0).abs() < 1e-5);
    }

    #[test]
    fn grouped_routing_masks_the_weaker_groups_and_normalises() {
        // Groups {0,1} and {2,3}; the best single expert (0) sits in the weaker group.
        let r = run(&routing(2, 1, 2, true), &[0.95, 0.05, 0.7, 0.7], &[0.0; 4]);
        let mut ids: Vec<u32> = r.iter().map(|x| x.0).collect();
        ids.sort();
        assert_eq!(ids, vec![2, 3]);
        let total: f32 = r.iter().map(|x| x.1).sum();
        assert!(
            (total - 2.0).abs() < 1e-5,
            "normalised weights × scale 2: {total}"
        );
    }

    #[test]
    fn every_token_is_routed_on_its_own_row_best_first_ties_to_the_lower_index() {
        // Token 0 prefers 1 then 2; token 1 has a tie between 0 and 3 (0 first).
        let r = run(
            &routing(1, 1, 2, false),
            &[0.1, 0.9, 0.6, 0.2, 0.7, 0.1, 0.2, 0.7],
            &[0.0; 4],
        );
        let ids: Vec<u32> = r.iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![1, 2, 0, 3]);
    }
}
