/* philox.h: Philox4x32-10 and the dropout mask drawn from it, written once for every backend (bit for bit). */
#ifndef RT_PHILOX_H
#define RT_PHILOX_H

#include <stdint.h>

#include "runtime/backend/backend.h"

/*
 * The dropout mask of rt_be_dropout, exactly, so that every backend draws the same bits:
 *   mask key  = words 0,1 of Philox4x32-10(ctr = {step lo, step hi, layer, site}, key = {seed lo, seed hi})
 *   bits      = Philox4x32-10(ctr = {c / 4, pos lo, pos hi, 0}, key = mask key), word c % 4
 *   keep      = (bits >> 8) * 2^-24 >= p       (probability 1 - p to 2^-24)
 * for the value at global position pos and channel c. The CPU backend (backend_cpu.c) and the CUDA backend
 * (backend_cuda_ops.cu, on host and device) both include this header.
 */

/* Compiled by nvcc the functions below run on the host and on the device; in C the macro is empty. */
#ifdef __CUDACC__
#define RT_HOST_DEVICE __host__ __device__
#else
#define RT_HOST_DEVICE
#endif

#define RT_PHILOX_M0 0xD2511F53u /* round multipliers */
#define RT_PHILOX_M1 0xCD9E8D57u
#define RT_PHILOX_W0 0x9E3779B9u /* Weyl key increments */
#define RT_PHILOX_W1 0xBB67AE85u

/* out = Philox4x32-10(ctr, key): ten rounds, the key bumped by the Weyl constants between rounds. */
static inline RT_HOST_DEVICE void rt_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += RT_PHILOX_W0;
            k1 += RT_PHILOX_W1;
        }
        uint64_t prod0 = (uint64_t)RT_PHILOX_M0 * c0;
        uint64_t prod1 = (uint64_t)RT_PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(prod0 >> 32), lo0 = (uint32_t)prod0;
        uint32_t hi1 = (uint32_t)(prod1 >> 32), lo1 = (uint32_t)prod1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The mask key of one (seed, step, layer, site): drawn once per dropout call. */
static inline RT_HOST_DEVICE void rt_dropout_mask_key(rt_rng_key key, uint32_t mask_key[2]) {
    const uint32_t key_ctr[4] = {(uint32_t)key.step, (uint32_t)(key.step >> 32), key.layer, key.site};
    const uint32_t seed_key[2] = {(uint32_t)key.seed, (uint32_t)(key.seed >> 32)};
    uint32_t key_words[4];
    rt_philox4x32_10(key_ctr, seed_key, key_words);
    mask_key[0] = key_words[0];
    mask_key[1] = key_words[1];
}

/* bits[j] decides channel 4 * group + j of the token at global position `position`. */
static inline RT_HOST_DEVICE void rt_dropout_group_bits(const uint32_t mask_key[2], uint32_t group, uint64_t position,
                                                        uint32_t bits[4]) {
    const uint32_t ctr[4] = {group, (uint32_t)position, (uint32_t)(position >> 32), 0};
    rt_philox4x32_10(ctr, mask_key, bits);
}

/* 1 when the value with these bits is kept under drop probability p. */
static inline RT_HOST_DEVICE int rt_dropout_keep(uint32_t bits, float p) {
    float uniform = (float)(bits >> 8) * 0x1.0p-24f;
    return uniform >= p;
}

#endif
