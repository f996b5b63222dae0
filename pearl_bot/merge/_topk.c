/* The first-k set of torch's CPU argsort(descending=True) of integer keys, in O(n).
 *
 * torch sorts (key, index) pairs with libstdc++'s std::sort, comparing key_a > key_b. Its
 * introsort partitions (median of three moved to `first`, unguarded Hoare partition) while a
 * range holds more than 16 elements, recursing on [cut, last) and looping on [first, cut) with
 * the depth budget decremented once per step, then a stable insertion sort runs over the whole
 * array without moving anything across a cut. Which tied keys land in the first k therefore
 * depends only on the ranges that contain the boundary k; this file replays exactly those.
 * See pearl_bot/merge/topk.py for how it is built, loaded and checked.
 */
#include <stdint.h>
#include <stdlib.h>

#define THRESHOLD 16

typedef struct {
    int32_t key;
    int32_t idx;
} pair_t;

/* comp(a, b) of a descending sort. */
#define GT(a, b) ((a).key > (b).key)

static void swap_pairs(pair_t *a, pair_t *b) {
    pair_t t = *a;
    *a = *b;
    *b = t;
}

static void move_median_to_first(pair_t *result, pair_t *a, pair_t *b, pair_t *c) {
    if (GT(*a, *b)) {
        if (GT(*b, *c)) swap_pairs(result, b);
        else if (GT(*a, *c)) swap_pairs(result, c);
        else swap_pairs(result, a);
    } else if (GT(*a, *c)) swap_pairs(result, a);
    else if (GT(*b, *c)) swap_pairs(result, c);
    else swap_pairs(result, b);
}

static pair_t *unguarded_partition(pair_t *first, pair_t *last, const pair_t *pivot) {
    for (;;) {
        while (GT(*first, *pivot)) ++first;
        --last;
        while (GT(*pivot, *last)) --last;
        if (!(first < last)) return first;
        swap_pairs(first, last);
        ++first;
    }
}

/* Stable insertion sort, descending: an element only passes strictly smaller ones. */
static void insertion_sort(pair_t *first, pair_t *last) {
    for (pair_t *i = first + 1; i < last; ++i) {
        pair_t val = *i;
        pair_t *j = i;
        while (j > first && GT(val, *(j - 1))) {
            *j = *(j - 1);
            --j;
        }
        *j = val;
    }
}

static int depth_limit(int64_t n) {
    int lg = 0;
    while ((n >> (lg + 1)) != 0) ++lg;
    return 2 * lg;
}

/* Sets mask[i] = 1 for the k original indices torch's descending argsort puts first.
 * keys: n contiguous int16 (width 2) or int32 (width 4) values; 0 < k < n < 2^31.
 * Returns 0 on success, 1 where introsort would heapsort on the path (not replicated),
 * 2 on bad arguments or when the scratch copy cannot be allocated. */
int topk_mask(const void *keys, int width, int64_t n, int64_t k, uint8_t *mask) {
    if (k <= 0 || k >= n || n > INT32_MAX || (width != 2 && width != 4)) return 2;
    pair_t *pairs = malloc((size_t)n * sizeof(pair_t));
    if (pairs == NULL) return 2;
    const int16_t *k16 = keys;
    const int32_t *k32 = keys;
    for (int64_t i = 0; i < n; ++i) {
        pairs[i].key = width == 2 ? k16[i] : k32[i];
        pairs[i].idx = (int32_t)i;
    }

    pair_t *first = pairs, *last = pairs + n, *bound = pairs + k;
    int depth = depth_limit(n);
    int32_t kth;
    for (;;) {
        if (last - first <= THRESHOLD) {
            insertion_sort(first, last);
            kth = (bound - 1)->key;
            break;
        }
        if (depth == 0) {
            free(pairs);
            return 1;
        }
        --depth;
        pair_t *mid = first + (last - first) / 2;
        move_median_to_first(first, first + 1, mid, last - 1);
        pair_t *cut = unguarded_partition(first + 1, last, first);
        if (cut == bound) {
            /* Every key in [first, cut) is >= the pivot, which sits at `first`. */
            kth = first->key;
            break;
        }
        if (bound > cut) first = cut;
        else last = cut;
    }

    /* Keys above the k-th are all kept; of those equal to it, the ones placed before k. */
    for (int64_t i = 0; i < n; ++i) {
        int32_t key = width == 2 ? k16[i] : k32[i];
        mask[i] = key > kth;
    }
    for (pair_t *p = pairs; p < bound; ++p) {
        if (p->key == kth) mask[p->idx] = 1;
    }
    free(pairs);
    return 0;
}
