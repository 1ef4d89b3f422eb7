// Runs kernels/sampling.cu on the CPU (sample_ban_args_f32 then sample_f32 with 1024
// threads, as a decode step launches them; sample_penalties_f32, sample_ban_f32) against the
// CPU sampler's rules, re-implemented here from src/engine/sampler.rs (Sampler::sample):
// bans → penalties → greedy (argmax over non-NaN, non-(-inf), ties to the lowest id; nothing
// left: the lowest id not banned) or temperature → top-k (score desc, id asc) → softmax
// (f32 exp, f64 sum) → top-p (shortest best-first prefix with f32 mass ≥ top_p) → min-p
// (p ≥ min_p · p_max) → draw.
//
// The draw: the kernel walks the kept tokens in id order (by design; the CPU walks its
// candidate order, same distribution). For each kept token the driver sets the uniform to
// the middle of that token's interval in id order and expects exactly that token; a kept set
// that differs from the CPU's (a token too many or too few, a wrong tie at a cut) moves the
// intervals and is caught, as are picks of tokens outside it over a grid of uniforms.
#include "../sampling.cu"

#include "check.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <set>
#include <string>

struct Knobs {
    float temperature = 1.f;
    int top_k = 0;
    float top_p = 1.f;
    float min_p = 0.f;
    std::vector<uint32_t> bans;
};

static uint32_t device_draw(const std::vector<float>& logits_in, const Knobs& k, float u) {
    std::vector<float> logits = logits_in;
    SampleParams p{};
    p.temperature = k.temperature;
    p.top_k = k.top_k;
    p.top_p = k.top_p;
    p.min_p = k.min_p;
    p.u = u;
    p.n_banned = (int)k.bans.size();
    for (size_t i = 0; i < k.bans.size() && i < SAMPLE_MAX_BANS; ++i) p.banned[i] = k.bans[i];
    std::vector<uint32_t> out{0xdeadbeefu};
    const int vocab = (int)logits.size();
    launch({1, 1, 1}, {32, 1, 1}, 0, [&] { sample_ban_args_f32(logits.data(), vocab, &p); });
    launch({1, 1, 1}, {SAMPLE_THREADS, 1, 1}, 0, [&] { sample_f32(logits.data(), vocab, &p, out.data()); });
    return out[0];
}

// The CPU's rules: either a greedy id (kept empty) or the kept (id, weight) in id order.
struct Plan {
    bool greedy = false;
    uint32_t id = 0;
    std::vector<std::pair<uint32_t, double>> kept;
};
static uint32_t cpu_greedy(const std::vector<float>& l, const std::vector<uint32_t>& bans) {
    int best = -1;
    for (size_t i = 0; i < l.size(); ++i) {
        if (std::isnan(l[i]) || l[i] == -INFINITY) continue;
        if (best < 0 || l[i] > l[best]) best = (int)i;
    }
    if (best >= 0) return (uint32_t)best;
    for (uint32_t id = 0; id < l.size(); ++id)
        if (std::find(bans.begin(), bans.end(), id) == bans.end()) return id;
    return 0;
}
static Plan cpu_plan(std::vector<float> l, const Knobs& k) {
    for (uint32_t b : k.bans)
        if (b < l.size()) l[b] = -INFINITY;
    Plan plan;
    if (std::isnan(k.temperature) || k.temperature <= 0.f) {
        plan.greedy = true;
        plan.id = cpu_greedy(l, k.bans);
        return plan;
    }
    const float inv_t = 1.f / k.temperature;
    std::vector<std::pair<uint32_t, float>> c;
    for (size_t i = 0; i < l.size(); ++i)
        if (std::isfinite(l[i])) c.push_back({(uint32_t)i, l[i] * inv_t});
    if (c.empty()) {
        plan.greedy = true;
        plan.id = cpu_greedy(l, k.bans);
        return plan;
    }
    auto by_score = [](const std::pair<uint32_t, float>& a, const std::pair<uint32_t, float>& b) {
        return a.second != b.second ? a.second > b.second : a.first < b.first;
    };
    std::sort(c.begin(), c.end(), by_score);
    if (k.top_k > 0 && (size_t)k.top_k < c.size()) c.resize(k.top_k);
    const float mx = c[0].second;
    double sum = 0;
    for (auto& x : c) sum += (double)(x.second = std::exp(x.second - mx));
    const float inv_sum = (float)(1.0 / sum);
    for (auto& x : c) x.second *= inv_sum;
    if (k.top_p < 1.f) {
        const float tp = std::max(k.top_p, 0.f);
        float cum = 0.f;
        size_t keep = c.size();
        for (size_t i = 0; i < c.size(); ++i) {
            cum += c[i].second;
            if (cum >= tp) {
                keep = i + 1;
                break;
            }
        }
        c.resize(keep);
    }
    if (k.min_p > 0.f) {
        float top = 0.f;
        for (auto& x : c) top = std::max(top, x.second);
        const float th = k.min_p * top;
        c.erase(std::remove_if(c.begin(), c.end(), [&](auto& x) { return x.second < th; }), c.end());
    }
    std::sort(c.begin(), c.end());
    for (auto& x : c) plan.kept.push_back({x.first, (double)x.second});
    return plan;
}

static std::string ids(const std::vector<uint32_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 12; ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return v.size() > 12 ? s + ",…" : s;
}

static void scenario(const char* what, const std::vector<float>& logits, const Knobs& k, int grid = 8) {
    const Plan plan = cpu_plan(logits, k);
    if (plan.greedy) {
        std::set<uint32_t> got;
        for (float u : {0.f, 0.5f, 0.999f}) got.insert(device_draw(logits, k, u));
        const bool ok = got.size() == 1 && *got.begin() == plan.id;
        check::expect(ok, "%s: greedy pick %u, device %s", what, plan.id,
                      ids(std::vector<uint32_t>(got.begin(), got.end())).c_str());
        return;
    }
    double total = 0;
    for (auto& x : plan.kept) total += x.second;
    // At most 16 midpoints (every kept token when there are no more), evenly spread.
    std::vector<uint32_t> want, got_mid, all;
    double cum = 0;
    const size_t m = plan.kept.size(), step = (m + 15) / 16;
    for (size_t i = 0; i < m; ++i) {
        const auto& x = plan.kept[i];
        const float u = (float)((cum + x.second / 2) / total);
        cum += x.second;
        all.push_back(x.first);
        if (i % step != 0 && i != m - 1) continue;
        want.push_back(x.first);
        got_mid.push_back(device_draw(logits, k, u));
    }
    std::set<uint32_t> kept_set(all.begin(), all.end()), outside;
    for (int i = 0; i < grid; ++i) {
        const uint32_t id = device_draw(logits, k, (i + 0.5f) / grid);
        if (!kept_set.count(id)) outside.insert(id);
    }
    const bool ok = got_mid == want && outside.empty();
    check::expect(ok, "%s: CPU keeps %zu tokens; device at their interval midpoints {%s} (want {%s})%s%s", what,
                  all.size(), ids(got_mid).c_str(), ids(want).c_str(), outside.empty() ? "" : ", outside the set: ",
                  ids(std::vector<uint32_t>(outside.begin(), outside.end())).c_str());
}

static void penalties_and_bans() {
    const int vocab = 600;
    std::vector<float> l(vocab);
    for (auto& x : l) x = check::sym(4.f);
    l[7] = 0.f;
    std::vector<uint32_t> tokens{3, 7, 599, 250, 1000 /* past the vocab: ignored */};
    std::vector<float> want = l;
    const float rep = 1.3f, presence = 0.4f;
    for (uint32_t t : tokens)
        if (t < (uint32_t)vocab) {
            float v = want[t];
            v = v > 0.f ? v / rep : v * rep;
            want[t] = v - presence;
        }
    std::vector<float> got = l;
    launch({1, 1, 1}, {256, 1, 1}, 0,
           [&] { sample_penalties_f32(got.data(), tokens.data(), (int)tokens.size(), vocab, rep, presence); });
    check::expect(std::memcmp(got.data(), want.data(), vocab * 4) == 0,
                  "sample_penalties_f32: repetition 1.3 and presence 0.4 on 4 distinct tokens (one past the vocab) as the CPU");
    std::vector<uint32_t> bans{0, 299, 300, 599, 600};
    want = l;
    for (uint32_t b : bans)
        if (b < (uint32_t)vocab) want[b] = -INFINITY;
    got = l;
    launch({2, 1, 1}, {256, 1, 1}, 0, [&] { sample_ban_f32(got.data(), bans.data(), (int)bans.size(), vocab); });
    check::expect(std::memcmp(got.data(), want.data(), vocab * 4) == 0,
                  "sample_ban_f32: 4 ids set to -inf, one past the vocab ignored");
}

int main() {
    penalties_and_bans();
    Knobs greedy;
    greedy.temperature = 0.f;
    // Greedy: ties to the lowest id, NaN and -inf skipped; all -inf → lowest id not banned.
    {
        std::vector<float> l(300, -1.f);
        l[9] = 3.f, l[5] = 3.f, l[200] = NAN, l[2] = -INFINITY;
        scenario("greedy with a tie at ids 5 and 9, a NaN", l, greedy);
        std::vector<float> none(40, -INFINITY);
        Knobs b = greedy;
        b.bans = {0, 1, 3};
        scenario("greedy over all -inf with 0, 1, 3 banned", none, b);
        Knobs t = b;
        t.temperature = 0.8f;
        scenario("temperature 0.8 over all -inf with 0, 1, 3 banned", none, t);
    }
    // Ties at the cuts: 2 tokens at 3.0 and 10 at 2.0; top-k 4 keeps the two lowest of the
    // 2.0 ties, top-k 1 of a tie is greedy, top-p through the ties keeps ⌈left / w⌉ of them.
    {
        std::vector<float> l(500);
        for (auto& x : l) x = check::uniform(-6.f, 0.f);
        for (int i : {70, 410}) l[i] = 3.f;
        for (int i : {5, 33, 34, 90, 120, 260, 261, 300, 450, 499}) l[i] = 2.f;
        Knobs k;
        k.top_k = 4;
        scenario("top-k 4 through a 10-way tie", l, k);
        k.top_k = 1;
        scenario("top-k 1 with the best tied", l, k);
        k.top_k = 0;
        k.top_p = 0.5f;
        scenario("top-p 0.5 through a tie", l, k);
        k.top_p = 1e-6f;
        scenario("top-p 1e-6 (greedy, tie to the lower id)", l, k);
        k.top_p = 0.7f;
        k.bans = {70, 33};
        scenario("top-p 0.7 with two banned ids (one of each tie)", l, k);
        k.top_p = 1.f;
        k.bans = {};
        k.top_k = 12;
        scenario("top-k 12: the cut at the end of the tie", l, k);
        k.top_k = 3;
        k.temperature = 0.25f;
        k.top_p = 0.999f;
        scenario("top-k 3 through the tie, temperature 0.25, top-p 0.999", l, k);
    }
    // Fewer finite logits than top-k (bans and -inf), and top-p just below 1.
    {
        std::vector<float> l(200, -INFINITY);
        for (int i = 0; i < 200; i += 17) l[i] = check::uniform(-1.f, 1.f);
        l[100] = NAN;
        Knobs k;
        k.top_k = 40;
        k.bans = {17, 34};
        scenario("top-k 40 over 10 finite logits, 2 of them banned, a NaN", l, k);
        k.top_k = 0;
        k.top_p = std::nextafter(1.f, 0.f);
        scenario("top-p just below 1", l, k);
    }
    // Min-p and temperature on a spread of logits; vocab 3000 (three ids per thread).
    {
        std::vector<float> l(3000);
        for (auto& x : l) x = check::uniform(-8.f, 0.f);
        for (int i = 0; i < 12; ++i) l[check::rng() % 3000] = check::uniform(1.f, 3.f);
        Knobs k;
        k.temperature = 0.7f;
        k.min_p = 0.05f;
        scenario("temperature 0.7, min-p 0.05", l, k);
        k.temperature = 1.3f;
        k.top_k = 20;
        k.top_p = 0.9f;
        k.min_p = 0.02f;
        scenario("temperature 1.3, top-k 20, top-p 0.9, min-p 0.02", l, k);
    }
    // A real vocabulary: 131072 ids, a few strong ones over a long tail.
    {
        std::vector<float> l(131072);
        for (auto& x : l) x = check::uniform(-12.f, 2.f);
        for (int i = 0; i < 30; ++i) l[check::rng() % l.size()] = check::uniform(4.f, 9.f);
        Knobs k;
        k.temperature = 0.7f;
        k.top_k = 50;
        k.top_p = 0.9f;
        scenario("vocab 131072, temperature 0.7, top-k 50, top-p 0.9", l, k, 4);
        Knobs g;
        g.temperature = 0.f;
        scenario("vocab 131072 greedy", l, g);
    }
    return check::finish("sampling");
}
