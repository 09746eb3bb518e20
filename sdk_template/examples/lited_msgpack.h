/* Reading lited's msgpack messages (docs/protocol.md): what the C examples share. */
#ifndef LITED_MSGPACK_H
#define LITED_MSGPACK_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

/* The value of `key` in a map, or NULL when it is absent or nil (a daemon
 * may well send None for "nothing"). The last one wins, as in a Python
 * dict; keys that are not strings are someone else's business. */
static inline const msgpack_object *get(const msgpack_object *map, const char *key)
{
    const msgpack_object *found = NULL;
    size_t len = strlen(key);

    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL; /* the union would be read as the wrong member */
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
            memcmp(k->via.str.ptr, key, len) == 0)
            found = &map->via.map.ptr[i].val;
    }
    return found && found->type == MSGPACK_OBJECT_NIL ? NULL : found;
}

static inline int is_str(const msgpack_object *o)
{
    return o && o->type == MSGPACK_OBJECT_STR;
}

/* Strings come from the network: control characters become '?' so that
 * one result stays one line (and a NUL cannot cut it short). */
static inline void put_str(FILE *out, const msgpack_object *o)
{
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        unsigned char c = (unsigned char)o->via.str.ptr[i];
        fputc(c < 0x20 || c == 0x7f ? '?' : c, out);
    }
}

/* The string in double quotes, its own quotes and backslashes escaped with a backslash. */
static inline void put_quoted(FILE *out, const msgpack_object *o)
{
    fputc('"', out);
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        unsigned char c = (unsigned char)o->via.str.ptr[i];
        if (c == '"' || c == '\\')
            fputc('\\', out);
        fputc(c < 0x20 || c == 0x7f ? '?' : c, out);
    }
    fputc('"', out);
}

static inline int is_int(const msgpack_object *o)
{
    return o && (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                 o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
}

/* "numbers are msgpack ints or float64"; float32 costs nothing to accept. */
static inline int is_num(const msgpack_object *o)
{
    return is_int(o) || (o && (o->type == MSGPACK_OBJECT_FLOAT64 ||
                               o->type == MSGPACK_OBJECT_FLOAT32));
}

static inline double num(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
    default: return o->via.f64;
    }
}

/* An integer, or a float with an integral value ("accept a msgpack int or
 * float wherever a number is expected": 3.0 is 3). */
static inline int is_whole(const msgpack_object *o)
{
    if (is_int(o))
        return 1;
    return is_num(o) && o->via.f64 >= -9.2e18 && o->via.f64 <= 9.2e18 &&
           (double)(int64_t)o->via.f64 == o->via.f64;
}

#endif
