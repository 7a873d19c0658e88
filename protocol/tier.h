/* Security tiers (docs/PROTOCOL-NOMYO.md, "Security tiers"): one bit each,
 * and the one table of their wire names.  Pure functions; used by the
 * client, the gateway and the tools alike. */
#ifndef VEIL_TIER_H
#define VEIL_TIER_H

#pragma GCC visibility push(hidden)

#define VEIL_TIER_STANDARD (1u << 0)
#define VEIL_TIER_HIGH (1u << 1)
#define VEIL_TIER_MAXIMUM (1u << 2)
#define VEIL_TIER_ALL (VEIL_TIER_STANDARD | VEIL_TIER_HIGH | VEIL_TIER_MAXIMUM)

/* The bit of a tier name ("standard", "high", "maximum"; exact case), or
 * 0 when s is NULL or not a tier name. */
unsigned veil_tier_parse(const char *s);
/* The wire name of one tier bit, or NULL when bit is not exactly one. */
const char *veil_tier_name(unsigned bit);

#pragma GCC visibility pop

#endif /* VEIL_TIER_H */
