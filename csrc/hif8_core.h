/* The scalar rounding core (included by hif8_internal.h). One algorithm for all paths:
 * in the binade [2^e, 2^(e+1)) HiF8 keeps mw mantissa bits (3 for |e| <= 3, 2 for
 * 4..7, 1 for 8..15, 0 in the denormal binades e = -22..-16), so rounding is an
 * integer add on the float bits followed by clearing the 23-mw low bits. A carry
 * out of the mantissa lands on 2^(e+1), which every binade's grid contains. */
#ifndef HIF8QAT_HIF8_CORE_H
#define HIF8QAT_HIF8_CORE_H

/* Positive code of a rounded magnitude with exponent E (unbiased) and mantissa field m. */
static inline uint32_t hif8_code_from_parts(int E, uint32_t m) {
    if (E < -15) return (uint32_t)(E + 23);            /* denormal: value 2^(M-23) */
    uint32_t aE = (uint32_t)(E < 0 ? -E : E), sE = E < 0;
    if (aE >= 8) return (0x60u | sE << 4 | (aE - 8) << 1) + m;
    if (aE >= 4) return (0x40u | sE << 4 | (aE - 4) << 2) + m;
    if (aE >= 2) return (0x20u | sE << 4 | (aE - 2) << 3) + m;
    if (aE == 1) return (0x10u | sE << 3) + m;
    return 0x08u + m;
}

static inline uint32_t hif8_round_mag_f32(uint32_t ab, int stochastic, uint32_t rand16,
                                          int saturate, uint8_t *code_out) {
    (void)saturate;
    if (ab < 0x34800000u) { /* below 2^-22: neighbours 0 and 2^-22 */
        int up;
        if (stochastic) {
            float a;
            memcpy(&a, &ab, 4);
            up = (float)rand16 < a * 274877906944.0f; /* a * 2^38: P(up) = a / 2^-22 */
        } else {
            up = ab >= 0x34000000u; /* >= 2^-23 (the tie) goes away from zero */
        }
        *code_out = up ? 1 : 0;
        return up ? 0x34800000u : 0u;
    }
    int e = (int)(ab >> 23) - 127;
    int ae = e < 0 ? -e : e;
    int mw = e < -15 ? 0 : 3 - (ae >= 4) - (ae >= 8);
    int sh = 23 - mw;
    uint32_t add = stochastic ? rand16 << (sh - 16) : 1u << (sh - 1);
    uint32_t rb = (ab + add) & ~((1u << sh) - 1u);
    if (rb >= 0x47400000u) rb = 0x47000000u; /* stochastic only: [32768, 40960) stays finite */
    int E = (int)(rb >> 23) - 127;
    uint32_t m = (rb & 0x7fffffu) >> sh;
    *code_out = (uint8_t)hif8_code_from_parts(E, m);
    return rb;
}
#endif
