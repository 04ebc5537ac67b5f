/* The strategy registry, generated from list.h. */
#include <string.h>

#include "strategy.h"

#define RP_STRATEGY(name) extern const rp_strategy rp_strategy_##name;
#include "list.h"
#undef RP_STRATEGY

static const rp_strategy *const registry[] = {
#define RP_STRATEGY(name) &rp_strategy_##name,
#include "list.h"
#undef RP_STRATEGY
};

size_t rp_strategy_count(void) { return sizeof registry / sizeof registry[0]; }

const rp_strategy *rp_strategy_at(size_t i)
{
    return i < rp_strategy_count() ? registry[i] : NULL;
}

const rp_strategy *rp_strategy_find(const char *name)
{
    for (size_t i = 0; i < rp_strategy_count(); i++)
        if (!strcmp(registry[i]->name, name)) return registry[i];
    return NULL;
}
