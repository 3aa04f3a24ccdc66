// Dia sampling on the GPU, one decoder step (HF `generate` semantics, docs/model.md §4.4–4.7):
//   `select_token`: one workgroup per (item b, channel c): CFG top-k filter, temperature, EOS channel
//                   filter, top-p, multinomial draw (or argmax); records channel 0's "EOS is the argmax".
//   `advance`:      one workgroup for the batch: EOS delay pattern, finished/PAD, delay-mask override,
//                   writes codes, next tokens, positions and the status word.
// Scores are never stored as ±inf in arithmetic: a bitmask says which vocabulary ids are still kept, so
// fast-math compilers that assume finite values cannot change the result.
//
// State buffer (u32 words): [0] next row ℓ, [1] over, [2] S, [3] unused, then at the offsets in Params:
// force flag + forced tokens [B·C], active [B], counters (i32) [B·C], finished [B·C], choice [B·C],
// eos0 [B] (channel 0 picked EOS this row), forced [B·C] (row forced by the delay pattern this step).

const WG: u32 = 256u;
const CHUNK: u32 = {{CHUNK}}u;   // vocabulary ids per invocation, contiguous: lid·CHUNK + j
const MAXC: u32 = {{MAXC}}u;     // CHUNK·WG: room for every id as a top-p candidate
const NONE: u32 = 0xffffffffu;
const NEG_INF_BITS: u32 = 0xff800000u;

{{PARAMS}}

@group(0) @binding(0) var<uniform> P: Params;

// select_token
@group(0) @binding(1) var<storage, read> sel_logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> sel_state: array<u32>;

// advance
@group(0) @binding(1) var<storage, read_write> adv_state: array<u32>;
@group(0) @binding(2) var<storage, read> adv_prefix: array<u32>;
@group(0) @binding(3) var<storage, read_write> adv_codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> adv_tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> adv_qinfo: array<u32>;

// Processed-scores output (binding 3 of select_token, 6 of advance) or empty stubs.
{{RECORD}}

var<workgroup> wg_hist: array<atomic<u32>, 256>;
var<workgroup> wg_u: array<u32, 256>;
var<workgroup> wg_f: array<f32, 256>;
var<workgroup> wg_cval: array<f32, MAXC>;
var<workgroup> wg_cp: array<f32, MAXC>;
var<workgroup> wg_word: u32;
var<workgroup> wg_pick: atomic<u32>;
var<workgroup> wg_last: atomic<u32>;
var<workgroup> wg_unfinished: atomic<u32>;

// ---------------------------------------------------------------------------------------------
// workgroup helpers (call from uniform control flow only)
// ---------------------------------------------------------------------------------------------

// The value `x` of the (single) invocation with `writer` set, as a uniform value for everyone.
fn uniform_u32(writer: bool, x: u32) -> u32 {
    if writer {
        wg_word = x;
    }
    let r = workgroupUniformLoad(&wg_word);
    workgroupBarrier();   // nobody rewrites wg_word before every invocation has loaded it
    return r;
}

// Scans, sums and the argmax over the workgroup's invocations in the order of their logical index `lid`
// (`select_token`): workgroup-memory trees, or subgroup operations with one exchange across subgroups (generated per
// `Reduction`: sampling.rs, `reduction_code`).
//   scan_u32 / scan_f32: inclusive prefix sum; .y = total.
//   sum_f32: the total.
//   argmax_reduce: argmax over the kept ids (largest value, lowest id on ties): the id, uniform (NONE when nothing
//   is kept); the largest value goes to `top` (kept apart: it is not uniform).
{{REDUCE_FNS}}

// Order-preserving map f32 → u32 (larger float ⇒ larger key); −0 maps with +0 since they compare equal.
fn order_key(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if b == 0x80000000u {
        b = 0u;
    }
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
}

// Counter-based RNG: a bijective integer mix chained over (seed, row, item, channel); pure u32
// arithmetic, so every platform draws the same numbers. Mirrored by `counter_uniform` on the host.
fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn uniform01(row: u32, item: u32, channel: u32) -> f32 {
    var h = mix32(P.seed_lo ^ 0x9e3779b9u);
    h = mix32(h ^ P.seed_hi);
    h = mix32(h ^ row);
    h = mix32(h ^ (P.first_item + item));
    h = mix32(h ^ channel);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// ---------------------------------------------------------------------------------------------
// select_token: one workgroup per (b, c)
// ---------------------------------------------------------------------------------------------

@compute @workgroup_size(256)
fn select_token(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) hw_lid: u32,{{SG_ARGS}}
) {
    // The invocation's logical index: every per-invocation order below (ids lid·CHUNK + j, digits, candidates) is
    // by it, and the scans follow it.
{{LANE}}
    let row = wid.x + wid.y * nwg.x;   // b·C + c
    if row >= P.batch * P.channels {
        return;
    }
    if lid == 0u {
        atomicStore(&wg_pick, NONE);
        atomicStore(&wg_last, 0u);
    }
    // Steps recorded after the end change nothing.
    let over = uniform_u32(lid == 0u, sel_state[1]);
    if over != 0u {
        return;
    }
    let step = sel_state[0];
    let b = row / P.channels;
    let c = row % P.channels;
    let V = P.vocab;
    let eos = P.eos;
    let base = lid * CHUNK;
    let cond_base = row * V;
    let uncond_base = (P.batch * P.channels + row) * V;
    let sampling = P.sampling != 0u;

    // CFG: the guided g ranks the candidates, the conditional logits are the values.
    var val: array<f32, CHUNK>;
    var key: array<u32, CHUNK>;
    var valid = 0u;
    for (var j = 0u; j < CHUNK; j++) {
        let i = base + j;
        if i < V {
            let x = sel_logits[cond_base + i];
            let u = sel_logits[uncond_base + i];
            key[j] = order_key(x + (x - u) * P.cfg_scale);
            val[j] = x;
            if sampling {
                val[j] = x / P.temperature;
            }
            valid |= 1u << j;
        } else {
            key[j] = 0u;
            val[j] = 0.0;
        }
    }

    // Top-k of g by radix select on the keys, 8 bits per pass from the top: find the k-th largest key
    // (prefix under mask) and how many of the ids equal to it still belong in the set (rem).
    var prefix = 0u;
    var mask = 0u;
    var rem = P.top_k;
    for (var level = 0u; level < 4u; level++) {
        let shift = 24u - 8u * level;
        atomicStore(&wg_hist[lid], 0u);
        workgroupBarrier();
        for (var j = 0u; j < CHUNK; j++) {
            if ((valid >> j) & 1u) != 0u && (key[j] & mask) == prefix {
                atomicAdd(&wg_hist[(key[j] >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        // Suffix sums over digits: invocation lid holds digit 255 − lid.
        let digit = 255u - lid;
        let cnt = atomicLoad(&wg_hist[digit]);
        let at_or_above = scan_u32(lid, cnt).x;
        let above = at_or_above - cnt;
        let mine = at_or_above >= rem && above < rem;
        let packed = uniform_u32(mine, digit | ((rem - above) << 8u) | (cnt << 20u));
        prefix |= (packed & 255u) << shift;
        mask |= 255u << shift;
        rem = (packed >> 8u) & 0xfffu;
        if (packed >> 20u) == rem {
            break;   // every id with this prefix is in the set: no tie to break
        }
    }
    // Ties at the threshold: the lowest ids first (stable argsort of −g).
    var ties = 0u;
    for (var j = 0u; j < CHUNK; j++) {
        if ((valid >> j) & 1u) != 0u && (key[j] & mask) == prefix {
            ties += 1u;
        }
    }
    var rank = scan_u32(lid, ties).x - ties;
    var kept = 0u;
    for (var j = 0u; j < CHUNK; j++) {
        let i = base + j;
        if ((valid >> j) & 1u) != 0u {
            let k = key[j] & mask;
            var keep = k > prefix;
            if k == prefix {
                keep = rank < rem;
                rank += 1u;
            }
            // EOS channel filter, first part: PAD/BOS never; EOS only on channel 0.
            if i > eos || (c >= 1u && i == eos) {
                keep = false;
            }
            if keep {
                kept |= 1u << j;
            }
        }
    }

    // EOS channel filter, second part: if EOS is the argmax it is the only choice, else it is removed.
    var bv = 0.0;
    var bi = NONE;
    for (var j = 0u; j < CHUNK; j++) {
        if ((kept >> j) & 1u) != 0u && (bi == NONE || val[j] > bv) {
            bv = val[j];
            bi = base + j;
        }
    }
    var m = 0.0;
    let best = argmax_reduce(lid, bv, bi, &m);
    let eos_top = best == eos;
    for (var j = 0u; j < CHUNK; j++) {
        if (base + j == eos) != eos_top {
            kept &= ~(1u << j);
        }
    }

    // (The sampling top-k warper uses the CFG k again: at most k ids are left, so it never drops one.)

    // Top-p, HF form: ascending stable order, drop ids whose cumulative probability is ≤ 1 − top_p,
    // never the largest. Candidates are compacted in id order, then each counts the mass at or below it.
    if sampling && P.use_top_p != 0u && !eos_top && best != NONE {
        var n_local = 0u;
        var z_local = 0.0;
        for (var j = 0u; j < CHUNK; j++) {
            if ((kept >> j) & 1u) != 0u {
                n_local += 1u;
                z_local += exp(val[j] - m);
            }
        }
        let z = sum_f32(lid, z_local);
        let pos = scan_u32(lid, n_local);
        let n = pos.y;
        var p = pos.x - n_local;
        for (var j = 0u; j < CHUNK; j++) {
            if ((kept >> j) & 1u) != 0u {
                wg_cval[p] = val[j];
                wg_cp[p] = exp(val[j] - m) / z;
                p += 1u;
            }
        }
        workgroupBarrier();
        // Candidate q = lid + r·WG; one sweep over all candidates serves every q of this invocation.
        let mine = select(0u, (n - lid + WG - 1u) / WG, lid < n);
        var vq: array<f32, CHUNK>;
        var cum: array<f32, CHUNK>;
        for (var r = 0u; r < mine; r++) {
            vq[r] = wg_cval[lid + r * WG];
            cum[r] = 0.0;
        }
        var later = 0u;
        for (var t = 0u; t < n; t++) {
            let vt = wg_cval[t];
            let pt = wg_cp[t];
            for (var r = 0u; r < mine; r++) {
                if vt < vq[r] || (vt == vq[r] && t <= lid + r * WG) {
                    cum[r] += pt;
                } else {
                    later |= 1u << r;
                }
            }
        }
        var drop = 0u;
        for (var r = 0u; r < mine; r++) {
            // The last id in ascending order (nothing later) is never dropped.
            if ((later >> r) & 1u) != 0u && cum[r] <= P.top_p_drop {
                drop |= 1u << r;
            }
        }
        workgroupBarrier();
        for (var r = 0u; r < CHUNK; r++) {
            let q = lid + r * WG;
            if q < n {
                wg_cp[q] = select(1.0, 0.0, ((drop >> r) & 1u) != 0u);
            }
        }
        workgroupBarrier();
        p = pos.x - n_local;
        for (var j = 0u; j < CHUNK; j++) {
            if ((kept >> j) & 1u) != 0u {
                if wg_cp[p] == 0.0 {
                    kept &= ~(1u << j);
                }
                p += 1u;
            }
        }
    }

    // Choice: argmax (greedy, EOS, or nothing kept) or an inverse-CDF draw in id order.
    var choice = select(best, 0u, best == NONE);
    if sampling && !eos_top && best != NONE {
        var e: array<f32, CHUNK>;
        var mass = 0.0;
        for (var j = 0u; j < CHUNK; j++) {
            e[j] = 0.0;
            if ((kept >> j) & 1u) != 0u {
                e[j] = exp(val[j] - m);
                mass += e[j];
            }
        }
        let sc = scan_f32(lid, mass);
        let goal = uniform01(step, b, c) * sc.y;
        var running = sc.x - mass;
        var found = false;
        for (var j = 0u; j < CHUNK; j++) {
            if e[j] > 0.0 {
                running += e[j];
                if !found && running > goal {
                    found = true;
                    atomicMin(&wg_pick, base + j);
                }
                atomicMax(&wg_last, base + j + 1u);
            }
        }
        workgroupBarrier();
        let pick = atomicLoad(&wg_pick);
        let last = atomicLoad(&wg_last);
        if pick != NONE {
            choice = pick;
        } else if last != 0u {
            choice = last - 1u;   // u·total rounded past the last cumulative sum
        }
    }

    for (var j = 0u; j < CHUNK; j++) {
        let i = base + j;
        if i < V {
            put_score(row * V + i, select(NEG_INF_BITS, bitcast<u32>(val[j]), ((kept >> j) & 1u) != 0u));
        }
    }
    if lid == 0u {
        sel_state[P.off_choice + row] = choice;
        if c == 0u {
            sel_state[P.off_eos0 + b] = select(0u, 1u, eos_top);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// advance: one workgroup; the per-item state machine of `generate_batch`
// ---------------------------------------------------------------------------------------------

@compute @workgroup_size(256)
fn advance(@builtin(local_invocation_index) lid: u32) {
    if lid == 0u {
        atomicStore(&wg_unfinished, 0u);
    }
    let over = uniform_u32(lid == 0u, adv_state[1]);
    if over != 0u {
        return;
    }
    let step = uniform_u32(lid == 0u, adv_state[0]);
    let forcing = adv_state[P.off_force] != 0u;
    let C = P.channels;
    for (var b = lid; b < P.batch; b += WG) {
        // EOS delay pattern: a channel-0 EOS or the length limit starts the per-channel countdown.
        let counting = adv_state[P.off_active + b] != 0u || adv_state[P.off_eos0 + b] != 0u || step == P.trigger_row;
        adv_state[P.off_active + b] = select(0u, 1u, counting);
        var unfinished = false;
        for (var c = 0u; c < C; c++) {
            let r = b * C + c;
            let count = bitcast<i32>(adv_state[P.off_counter + r]);
            let forced = counting && count == 0;
            adv_state[P.off_forced + r] = select(0u, 1u, forced);
            if counting {
                adv_state[P.off_counter + r] = bitcast<u32>(count - 1);
            }
            var tok = select(adv_state[P.off_choice + r], P.eos, forced);
            if forcing {
                tok = adv_state[P.off_force + 1u + r];
            }
            // Each channel is its own sequence: PAD after its EOS.
            var fin = adv_state[P.off_finished + r] != 0u;
            if fin {
                tok = P.pad;
            }
            fin = fin || tok == P.eos;
            adv_state[P.off_finished + r] = select(0u, 1u, fin);
            unfinished = unfinished || !fin;
            // Delay mask: known prefix values win (after the finished bookkeeping, as in HF).
            if step < P.prefix_rows {
                let known = adv_prefix[(b * P.prefix_rows + step) * C + c];
                if known != P.pad {
                    tok = known;
                }
            }
            adv_codes[(step * P.batch + b) * C + c] = tok;
            adv_tokens[r] = tok;
        }
        if unfinished {
            atomicAdd(&wg_unfinished, 1u);
        }
    }
    // The row just produced is fed next, at position ℓ, by both CFG rows of every item.
    for (var r = lid; r < 2u * P.batch; r += WG) {
        adv_qinfo[2u * r + 1u] = step;
    }
    storageBarrier();
    workgroupBarrier();
    if lid == 0u {
        adv_state[P.off_force] = 0u;
        adv_state[0] = step + 1u;
        if atomicLoad(&wg_unfinished) == 0u || step + 1u >= P.max_length {
            adv_state[1] = 1u;
            adv_state[2] = step + 1u;
        }
    }
    // HF's scores of a row forced by the delay pattern: −inf except 0 at EOS.
    let rows = select(0u, P.batch * C, RECORD);
    for (var r = 0u; r < rows; r++) {
        if adv_state[P.off_forced + r] != 0u {
            for (var i = lid; i < P.vocab; i += WG) {
                put_forced_score(r * P.vocab + i, select(NEG_INF_BITS, 0u, i == P.eos));
            }
        }
    }
}
