/* c_subscriber: print the results and events a lited daemon publishes.
 *
 *   c_subscriber ENDPOINT [TOPIC_PREFIX] [COUNT]
 *
 * ENDPOINT is the daemon's PUB endpoint (ipc:///run/lited/pub.sock; a
 * tcp:// one with CURVE keys from LITED_SERVER_KEY and LITED_CLIENT_KEY),
 * TOPIC_PREFIX defaults to "result/" ("" gets everything), COUNT is how many
 * messages to receive before exiting 0 (default 0: forever).
 * Written from docs/protocol.md alone, with libzmq and msgpack-c. */
#define _GNU_SOURCE /* open_memstream; struct ucred (SO_PEERCRED) */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <zmq.h>

#include "lited_curve.h"
#include "lited_msgpack.h"
#include "lited_peer.h"

/* Why a message was skipped, or NULL when it was fine. */
typedef const char *why_t;

static int str_is(const msgpack_object *o, const char *s)
{
    return is_str(o) && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static void put_whole(FILE *out, const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        fprintf(out, "%" PRIu64, o->via.u64);
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        fprintf(out, "%" PRId64, o->via.i64);
    else
        fprintf(out, "%" PRId64, (int64_t)o->via.f64);
}

/* One of `known` (NULL-terminated): a value a later protocol version added is not. */
static int is_one_of(const msgpack_object *o, const char *const *known)
{
    for (; *known; known++)
        if (str_is(o, *known))
            return 1;
    return 0;
}

static const char *const EVENTS[] = {"state", "resized", "ring", "skipped", "decode", "model", "engine", "reload",
                                     "ready", "stopping", NULL};
static const char *const STATES[] = {"connecting", "streaming", "stalled", "backoff", "ended", "stopped", NULL};

/* "N detections: label score x1,y1,x2,y2 ["text"]; ..." or "N classes: label score; ...".
 * A missing list is an empty one; "text" is what a cascade's text stage read. */
static why_t put_items(FILE *out, const msgpack_object *list, const char *name,
                       int boxes, why_t bad)
{
    if (list && list->type != MSGPACK_OBJECT_ARRAY)
        return bad;
    uint32_t n = list ? list->via.array.size : 0;

    fprintf(out, "%" PRIu32 " %s", n, name);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *item = &list->via.array.ptr[i];
        if (item->type != MSGPACK_OBJECT_MAP)
            return bad;
        const msgpack_object *label = get(item, "label");
        const msgpack_object *score = get(item, "score");
        const msgpack_object *box = get(item, "box");
        if (!is_str(label) || !is_num(score))
            return bad;
        fputs(i ? "; " : ": ", out);
        put_str(out, label);
        fprintf(out, " %.2f", num(score));
        if (!boxes)
            continue;
        if (!box || box->type != MSGPACK_OBJECT_ARRAY || box->via.array.size != 4)
            return bad;
        for (uint32_t j = 0; j < 4; j++) {
            if (!is_num(&box->via.array.ptr[j]))
                return bad;
            fprintf(out, "%c%.1f", j ? ',' : ' ', num(&box->via.array.ptr[j]));
        }
        const msgpack_object *text = get(item, "text");
        if (text) {
            if (!is_str(text))
                return bad;
            fputc(' ', out);
            put_quoted(out, text);
        }
    }
    return NULL;
}

/* "stream seq model N detections: ...[ | M classes: ...]" */
static why_t put_result(FILE *out, const msgpack_object *msg)
{
    const msgpack_object *stream = get(msg, "stream");
    const msgpack_object *seq = get(msg, "seq");
    const msgpack_object *model = get(msg, "model");
    const msgpack_object *classes = get(msg, "classes");
    why_t why;

    if (!is_str(stream))
        return "bad stream";
    if (!is_whole(seq))
        return "bad seq";
    if (!is_str(model))
        return "bad model";
    put_str(out, stream);
    fputc(' ', out);
    put_whole(out, seq);
    fputc(' ', out);
    put_str(out, model);
    fputc(' ', out);
    why = put_items(out, get(msg, "detections"), "detections", 1, "bad detections");
    if (why)
        return why;
    /* Detectors send no classes (or an empty list): say nothing about them. */
    if (classes && classes->type == MSGPACK_OBJECT_ARRAY && classes->via.array.size == 0)
        return NULL;
    if (classes) {
        fputs(" | ", out);
        return put_items(out, classes, "classes", 0, "bad classes");
    }
    return NULL;
}

/* "event stream kind state detail", "-" for what the event does not carry
 * (an empty detail carries nothing too); a reload's `ok` shows as the state
 * "ok" / "failed". */
static why_t put_event(FILE *out, const msgpack_object *msg)
{
    const msgpack_object *stream = get(msg, "stream");
    const msgpack_object *event = get(msg, "event");
    const msgpack_object *state = get(msg, "state");
    const msgpack_object *detail = get(msg, "detail");
    const msgpack_object *ok = get(msg, "ok");

    if (!is_str(stream))
        return "bad stream";
    if (!is_str(event))
        return "bad event";
    if (state && !is_str(state))
        return "bad state";
    if (detail && !is_str(detail))
        return "bad detail";
    if (ok && ok->type != MSGPACK_OBJECT_BOOLEAN)
        return "bad ok";
    if (!is_one_of(event, EVENTS) || (state && !is_one_of(state, STATES)))
        return NULL; /* a kind or state this client does not know: ignore it, print nothing */
    fputs("event ", out);
    put_str(out, stream);
    fputc(' ', out);
    put_str(out, event);
    fputc(' ', out);
    if (state)
        put_str(out, state);
    else
        fputs(ok ? (ok->via.boolean ? "ok" : "failed") : "-", out);
    fputc(' ', out);
    if (detail && detail->via.str.size > 0) /* an empty detail carries nothing either */
        put_str(out, detail);
    else
        fputc('-', out);
    return NULL;
}

static why_t put_payload(FILE *out, const msgpack_object *msg)
{
    if (msg->type != MSGPACK_OBJECT_MAP)
        return "not a map";
    const msgpack_object *v = get(msg, "v");
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 != 1)
        return "v is not 1";
    const msgpack_object *type = get(msg, "type");
    if (!is_str(type))
        return "bad type";
    if (str_is(type, "result"))
        return put_result(out, msg);
    if (str_is(type, "event"))
        return put_event(out, msg);
    return NULL; /* a type this client does not know: ignore it, print nothing */
}

/* The payload must be exactly one msgpack object: trailing bytes are an error. */
static why_t put_message(FILE *out, const char *data, size_t size)
{
    msgpack_unpacked up;
    size_t off = 0;
    why_t why;

    msgpack_unpacked_init(&up);
    if (msgpack_unpack_next(&up, data, size, &off) != MSGPACK_UNPACK_SUCCESS || off != size)
        why = "not msgpack";
    else
        why = put_payload(out, &up.data);
    msgpack_unpacked_destroy(&up);
    return why;
}

/* Receive one whole message, keeping its second frame (the payload).
 * Returns the number of frames, or -1 on error. */
static int recv_message(void *sub, zmq_msg_t *payload)
{
    int frames = 0, more = 1;

    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sub, 0) < 0) {
            zmq_msg_close(&part);
            return -1;
        }
        more = zmq_msg_more(&part);
        if (++frames == 2)
            zmq_msg_move(payload, &part);
        zmq_msg_close(&part);
    }
    return frames;
}

int main(int argc, char **argv)
{
    const char *endpoint, *prefix;
    long count = 0;
    char *end;

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s ENDPOINT [TOPIC_PREFIX] [COUNT]\n", argv[0]);
        return 2;
    }
    endpoint = argv[1];
    prefix = argc > 2 ? argv[2] : "result/";
    if (argc > 3) {
        errno = 0;
        count = strtol(argv[3], &end, 10);
        if (errno || *end || end == argv[3] || count < 0) {
            fprintf(stderr, "%s: COUNT must be a number >= 0\n", argv[0]);
            return 2;
        }
    }
    /* Line by line even into a pipe, so a reader sees each message at once. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    char why_peer[512];
    if (untrusted_peer(endpoint, why_peer, sizeof why_peer)) {
        fprintf(stderr, "%s: %s\n", argv[0], why_peer);
        return 1;
    }
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    if (sub && curve_from_env(sub, why_peer, sizeof why_peer)) {
        fprintf(stderr, "%s: %s\n", argv[0], why_peer);
        return 1;
    }
    if (!sub || zmq_connect(sub, endpoint) != 0 ||
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "%s: %s: %s\n", argv[0], endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }

    for (long seen = 0; count == 0 || seen < count; seen++) {
        zmq_msg_t payload;
        char *line = NULL;
        size_t len = 0;
        char frames_why[48];
        why_t why;

        zmq_msg_init(&payload);
        int frames = recv_message(sub, &payload);
        if (frames < 0) {
            fprintf(stderr, "%s: receive: %s\n", argv[0], zmq_strerror(zmq_errno()));
            zmq_msg_close(&payload);
            return 1;
        }
        FILE *out = open_memstream(&line, &len);
        if (!out) {
            perror("open_memstream");
            return 1;
        }
        /* Build the line aside: a message found bad halfway prints nothing. */
        if (frames != 2) {
            snprintf(frames_why, sizeof frames_why, "expected 2 frames, got %d", frames);
            why = frames_why;
        } else {
            why = put_message(out, zmq_msg_data(&payload), zmq_msg_size(&payload));
        }
        fclose(out);
        if (why)
            fprintf(stderr, "skipped malformed message: %s\n", why);
        else if (len) {
            fwrite(line, 1, len, stdout);
            fputc('\n', stdout);
        }
        free(line);
        zmq_msg_close(&payload);
    }

    zmq_setsockopt(sub, ZMQ_LINGER, &(int){0}, sizeof(int));
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return 0;
}
