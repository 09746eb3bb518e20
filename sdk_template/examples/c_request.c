/* c_request: send one request without params to a lited daemon, print the reply.
 *
 *   c_request ENDPOINT [METHOD] [TIMEOUT_MS]
 *
 * ENDPOINT is the daemon's ROUTER endpoint (ipc:///run/lited/req.sock; a
 * tcp:// one with CURVE keys from LITED_SERVER_KEY and LITED_CLIENT_KEY),
 * METHOD defaults to "ping", TIMEOUT_MS to 5000. Prints "pong VERSION
 * protocol N" for ping, "ok RESULT" (msgpack-c's debug print) otherwise;
 * an error reply prints "error CODE: MESSAGE" to stderr and exits 1.
 * Written from docs/protocol.md alone, with libzmq and msgpack-c. */
#define _GNU_SOURCE /* struct ucred (SO_PEERCRED) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <zmq.h>

#include "lited_curve.h"
#include "lited_msgpack.h"
#include "lited_peer.h"

#define REQUEST_ID 1

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

/* The whole number `value`, as an int or a float ("accept a msgpack int or float wherever a
 * number is expected": an id of 1.0 is 1). */
static int is_uint(const msgpack_object *o, uint64_t value)
{
    return o && is_whole(o) && num(o) == (double)value;
}

/* Print the reply; returns the exit status, or -1 when the reply is malformed. */
static int put_reply(const msgpack_object *reply, const char *method)
{
    if (reply->type != MSGPACK_OBJECT_MAP || !is_uint(get(reply, "v"), 1) ||
        !is_uint(get(reply, "id"), REQUEST_ID))
        return -1;
    const msgpack_object *ok = get(reply, "ok");
    if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN)
        return -1;

    if (!ok->via.boolean) {
        const msgpack_object *error = get(reply, "error");
        if (!error || error->type != MSGPACK_OBJECT_MAP)
            return -1;
        const msgpack_object *code = get(error, "code");
        const msgpack_object *message = get(error, "message");
        if (!is_str(code) || !is_str(message))
            return -1;
        fputs("error ", stderr);
        put_str(stderr, code);
        fputs(": ", stderr);
        put_str(stderr, message);
        fputc('\n', stderr);
        return 1;
    }

    const msgpack_object *result = get(reply, "result");
    if (!result)
        return -1;
    if (strcmp(method, "ping") == 0) {
        if (result->type != MSGPACK_OBJECT_MAP)
            return -1;
        const msgpack_object *version = get(result, "version");
        const msgpack_object *protocol = get(result, "protocol");
        if (!is_str(version) || !is_whole(protocol) || num(protocol) < 0)
            return -1;
        fputs("pong ", stdout);
        put_str(stdout, version);
        printf(" protocol %.0f\n", num(protocol));
        return 0;
    }
    fputs("ok ", stdout);
    msgpack_object_print(stdout, *result);
    fputc('\n', stdout);
    return 0;
}

int main(int argc, char **argv)
{
    const char *endpoint, *method;
    long timeout_ms = 5000;
    char *end;

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s ENDPOINT [METHOD] [TIMEOUT_MS]\n", argv[0]);
        return 2;
    }
    endpoint = argv[1];
    method = argc > 2 ? argv[2] : "ping";
    if (argc > 3) {
        errno = 0;
        timeout_ms = strtol(argv[3], &end, 10);
        if (errno || *end || end == argv[3] || timeout_ms < 0 || timeout_ms > 3600000) {
            fprintf(stderr, "%s: TIMEOUT_MS must be a number of milliseconds\n", argv[0]);
            return 2;
        }
    }

    char why_peer[512];
    if (untrusted_peer(endpoint, why_peer, sizeof why_peer)) {
        fprintf(stderr, "%s: %s\n", argv[0], why_peer);
        return 1;
    }
    void *ctx = zmq_ctx_new();
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int timeout = (int)timeout_ms, linger = 0;
    if (dealer && curve_from_env(dealer, why_peer, sizeof why_peer)) {
        fprintf(stderr, "%s: %s\n", argv[0], why_peer);
        return 1;
    }
    /* No linger: with no daemon there, the queued request must not hold the exit. */
    if (!dealer || zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        zmq_connect(dealer, endpoint) != 0) {
        fprintf(stderr, "%s: %s: %s\n", argv[0], endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }

    /* {"v": 1, "id": 1, "method": METHOD, "params": {}} */
    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    pack_str(&pk, "v");
    msgpack_pack_int(&pk, 1);
    pack_str(&pk, "id");
    msgpack_pack_int(&pk, REQUEST_ID);
    pack_str(&pk, "method");
    pack_str(&pk, method);
    pack_str(&pk, "params");
    msgpack_pack_map(&pk, 0);
    int rc = zmq_send(dealer, buf.data, buf.size, 0) < 0 ? 1 : 0;
    msgpack_sbuffer_destroy(&buf);
    if (rc) {
        fprintf(stderr, "%s: send: %s\n", argv[0], zmq_strerror(zmq_errno()));
        goto out;
    }

    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, dealer, 0) < 0) {
        fprintf(stderr, "%s: no reply: %s\n", argv[0],
                zmq_errno() == EAGAIN ? "timed out" : zmq_strerror(zmq_errno()));
        rc = 1;
    } else if (zmq_msg_more(&msg)) {
        /* The reply is one frame; a multi-frame one is not from a lited daemon. */
        fprintf(stderr, "%s: malformed reply: more than one frame\n", argv[0]);
        rc = 1;
    } else {
        msgpack_unpacked up;
        size_t off = 0;
        msgpack_unpacked_init(&up);
        if (msgpack_unpack_next(&up, zmq_msg_data(&msg), zmq_msg_size(&msg), &off) !=
                MSGPACK_UNPACK_SUCCESS || off != zmq_msg_size(&msg))
            rc = -1;
        else
            rc = put_reply(&up.data, method);
        msgpack_unpacked_destroy(&up);
        if (rc < 0) {
            fprintf(stderr, "%s: malformed reply\n", argv[0]);
            rc = 1;
        }
    }
    zmq_msg_close(&msg);
out:
    zmq_close(dealer);
    zmq_ctx_term(ctx);
    return rc;
}
