"""One-sentence definitions of every quantity a SpecLens figure shows, reused as its caption.

They restate `decoding/trace.py`'s definitions for readers of a figure; change both together.
"""
from __future__ import annotations

DEFINITIONS: dict[str, str] = {
    "forward_pass": "A forward pass is one call of the target model; the condition prefill (step 0) counts.",
    "nfe": "NFE = number of forward passes of the target model for one image, the prefill included "
           "(plain AR: NFE = number of tokens).",
    "step_compression": "Step compression = tokens / NFE (plain AR = 1.00; higher = fewer forward passes).",
    "mean_accepted_length": "Mean accepted length = tokens committed per forward pass, the resampled or bonus "
                            "token included (= step compression).",
    "mean_accepted_drafts": "Accepted drafts per pass = drafts accepted per forward pass, the resampled or "
                            "bonus token excluded.",
    "acceptance_rate": "Acceptance rate = accepted drafts / drafts verified.",
    "acceptance_by_depth": "Depth d = a draft's distance from the committed prefix (1 = the first draft of a "
                           "window; in a tree, its level). Rate = accepted / verified at depth d; conditional rate "
                           "= the same among drafts whose earlier drafts (ancestors) were all accepted, drawn only "
                           "where it differs from the rate. Rates from fewer than 5 drafts are not drawn; the bars "
                           "count the drafts verified.",
    "commit_step": "Commit step = the forward pass whose output committed the token at that position.",
    "commit_kind": "How a token was committed: draft (accepted by the exact rule), relaxed (accepted only thanks "
                   "to LANTERN's or GSD's relaxation), resampled (drawn from the residual after a rejection), "
                   "bonus (drawn from the target with no draft left; every token of plain AR).",
    "accept_prob": "Acceptance probability = the probability with which the rule accepted the draft verified "
                   "at that position in the pass that committed it (blank where no draft was verified).",
    "group_size": "Group size = the codes whose target mass counted for the draft, the draft included: LANTERN's "
                  "1 + |A| (A = neighbours whose mass moved onto it) or GSD's |G|, at the committing verification; "
                  "0 when the rule has none.",
    "p_q": "p = target probability of a token, q = draft probability of the draft token.",
    "top1": "Top-1 probability = the target's largest probability at a position (after CFG, temperature, "
            "top-k/top-p), when its token was committed.",
    "entropy": "Entropy = the target distribution's entropy at a position, in nats, when its token was committed.",
    "wall_time": "Wall time = model forward (target calls) + decoder overhead (drafting, verification, sampling, "
                 "bookkeeping) + VQ decode (tokens to pixels), one image, batch 1, warm-up not traced.",
    "pixel_diff": "Pixel difference = |image - AR image| per pixel (0-255), shown where any token differs from "
                  "the AR run with the same class and seed.",
    "token_agreement": "Token agreement = share of positions whose token equals the AR run's (same class, seed).",
    "usage": "Usage = how many times a code was committed, over the traces shown.",
    "code_acceptance": "Code acceptance rate = accepted / verified drafts whose draft token was this code.",
    "code_relaxed": "Relaxed acceptances = drafts of this code accepted only thanks to the relaxation.",
    "projection": "2-D projection of the embeddings: PCA (exact, instant) or UMAP (cosine metric, fitted once per "
                  "model and cached on disk). Distances in 2-D are only a guide.",
    "neighbourhood": "Nearest codes = the k codes closest to the picked code in the chosen embedding space "
                     "(L2), LANTERN's B_k; LANTERN moves onto a draft the mass of the largest prefix of them whose "
                     "total target mass is at most delta.",
    "trace_groups": "Groups (from the current trace) = per verified draft, the codes whose target mass counted "
                    "for it, the draft included: GSD's group G (the tokens ranked around the draft that passed "
                    "both filters) or LANTERN's moved set A. Highlighted: the codes of the groups the picked code "
                    "formed as the draft, of the other drafts' groups that held it, and of the group verified at "
                    "the picked grid position.",
    "class_consistency": "Class consistency = share of samples that the shipped Fashion-MNIST classifier assigns "
                         "to the class they were generated for.",
    "replay": "Replay: one frame per forward pass. Coloured = committed in this pass (by kind), grey = committed "
              "earlier, white = not yet; open squares = drafts verified in this pass, crosses = drafts rejected "
              "or discarded; arrows on the right = the rows a pass decoded when it decoded several (ZipAR, PJD).",
    "verified_tree": "Verified tree: the drafts one pass verified, by depth (0 = the committed prefix); siblings are "
                     "alternative drafts for one position (SJD-PAC), the accepted path is blue, rejected nodes are "
                     "crossed.",
    "race": "Equal forward passes: every decoder after the same number k of target forward passes; drawn = "
            "committed by pass k, blank = not yet, outlined = drafts waiting for the next pass's verification. "
            "Built from the traces' tokens, not a decode of the partial grid.",
    "accepted_length_histogram": "Accepted length histogram: the share of forward passes that committed k tokens "
                                 "(the resampled/bonus token and the prefill included); dashed = the mean accepted "
                                 "length. A tall first bar = passes that gained nothing over AR.",
    "rows_per_pass": "Rows per pass: tokens each forward pass committed in each grid row; one row at a time for "
                     "raster decoders (a staircase), several at once for ZipAR and PJD (a band).",
    "target_top1_agreement": "Top-1 agreement = share of verified drafts that were the target's most probable token "
                             "at their node (p(draft) = the target's top-1 probability), every verification counted.",
}


def define(*keys: str) -> str:
    """The definitions of `keys`, one per line, as a Markdown caption."""
    unknown = [k for k in keys if k not in DEFINITIONS]
    if unknown:
        raise KeyError(f"no definition for {unknown}; known: {sorted(DEFINITIONS)}")
    return "\n".join(f"- {DEFINITIONS[k]}" for k in keys)
