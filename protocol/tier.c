/* Security tier names (protocol/tier.h). */
#include "config.h"

#include <string.h>

#include "tier.h"

static const struct {
    unsigned bit;
    const char *name;
} tiers[] = {
    {VEIL_TIER_STANDARD, "standard"},
    {VEIL_TIER_HIGH, "high"},
    {VEIL_TIER_MAXIMUM, "maximum"},
};

unsigned veil_tier_parse(const char *s)
{
    for (size_t i = 0; s && i < sizeof tiers / sizeof tiers[0]; i++)
        if (strcmp(s, tiers[i].name) == 0)
            return tiers[i].bit;
    return 0;
}

const char *veil_tier_name(unsigned bit)
{
    for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++)
        if (tiers[i].bit == bit)
            return tiers[i].name;
    return NULL;
}
