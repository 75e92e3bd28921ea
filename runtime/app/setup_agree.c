/* setup_agree.c: one setup result, one config and one set of input files for the whole job (setup_agree.h). */
#include "setup_agree.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEAD_BYTES 4096

int rt_setup_agree_status(rt_comm *world, int rc, rt_error *err) {
    double failed = rc ? 1.0 : 0.0;
    rt_allreduce_sum_f64(world, &failed, 1);
    if (failed == 0.0) return 0;
    if (rt_comm_agree(world, rc, err) == 0) return 0; /* not reached: some rank failed */
    if (err->msg[0] && failed < (double)world->size) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        rt_fail(err, "rank %d: %s", world->rank, msg);
    }
    return -1;
}

/* The lowest rank with a message reports it; every rank returns -1 when any rank has one. */
static int report_first(rt_comm *world, int differs, rt_error *err) {
    return rt_comm_agree(world, differs ? -1 : 0, err);
}

/* Copies text's first line, without its newline, into out; returns what follows it. */
static const char *next_line(const char *text, char *out, size_t cap) {
    size_t len = strcspn(text, "\n");
    snprintf(out, cap, "%.*s", (int)len, text);
    return text[len] ? text + len + 1 : text + len;
}

/* Names the first line where mine differs from rank 0's: "section.key = A here, B on rank 0". */
static void describe_difference(const char *mine, const char *theirs, int rank, rt_error *err) {
    char section[128] = "", a[512], b[512];
    while (*mine || *theirs) {
        mine = next_line(mine, a, sizeof a);
        theirs = next_line(theirs, b, sizeof b);
        if (strcmp(a, b) != 0) {
            /* "key = A" against "key = B": name the key once */
            size_t key_a = strcspn(a, "="), key_b = strcspn(b, "=");
            const char *theirs_shown = b[0] ? b : "(nothing)";
            if (a[key_a] && key_a == key_b && strncmp(a, b, key_a) == 0)
                theirs_shown = b + key_b + 1 + (b[key_b + 1] == ' ');
            rt_fail(err,
                    "rank %d: its resolved config differs from rank 0's: %s%s%s here, %s on rank 0 (every rank "
                    "must be given the same config and --set options)",
                    rank, section, section[0] ? "." : "", a[0] ? a : "(nothing)", theirs_shown);
            return;
        }
        if (a[0] == '[') snprintf(section, sizeof section, "%.*s", (int)strcspn(a + 1, "]"), a + 1);
    }
}

typedef struct {
    uint64_t exists, size, head_hash;
} file_digest;

static file_digest digest_of(const char *path) {
    file_digest d = {0, 0, 0xCBF29CE484222325ULL};
    struct stat dir_st;
    char config_json[RT_PATH_LEN + 16];
    if (stat(path, &dir_st) == 0 && S_ISDIR(dir_st.st_mode)) { /* a Hugging Face directory: its config.json */
        snprintf(config_json, sizeof config_json, "%s/config.json", path);
        path = config_json;
    }
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0) close(fd);
        return d;
    }
    unsigned char head[HEAD_BYTES];
    ssize_t got = read(fd, head, sizeof head);
    close(fd);
    d.exists = 1;
    d.size = (uint64_t)st.st_size;
    for (ssize_t i = 0; i < got; i++)
        d.head_hash = (d.head_hash ^ head[i]) * 0x100000001B3ULL; /* FNV-1a */
    return d;
}

int rt_setup_agree_inputs(rt_comm *world, const rt_config *cfg, rt_error *err) {
    char *text = rt_config_to_text(cfg);
    uint64_t len = strlen(text);
    rt_comm_broadcast(world, &len, sizeof len, 0);
    char *rank0 = malloc_check(len + 1);
    if (world->rank == 0) memcpy(rank0, text, len + 1);
    rt_comm_broadcast(world, rank0, len + 1, 0);
    int differs = strcmp(text, rank0) != 0;
    if (differs) describe_difference(text, rank0, world->rank, err);
    free(rank0);
    free(text);
    if (report_first(world, differs, err)) return -1;

    /* the same config on every rank, so the same paths: each names the file its node holds */
    const struct {
        const char *key, *path;
    } files[] = {{"data.train", cfg->data_train}, {"data.val", cfg->data_val}, {"model.init_from", cfg->init_from}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (!files[i].path[0]) continue;
        file_digest mine = digest_of(files[i].path), theirs = mine;
        rt_comm_broadcast(world, &theirs, sizeof theirs, 0);
        differs = memcmp(&mine, &theirs, sizeof mine) != 0;
        if (differs && mine.exists != theirs.exists)
            rt_fail(err, "rank %d: %s: %s: %s here, %s on rank 0 (every node must hold the same file)", world->rank,
                    files[i].key, files[i].path, mine.exists ? "readable" : "cannot be opened",
                    theirs.exists ? "readable" : "cannot be opened");
        else if (differs)
            rt_fail(err,
                    "rank %d: %s: %s differs from rank 0's (%llu bytes here, %llu on rank 0%s; every node must hold "
                    "the same file)",
                    world->rank, files[i].key, files[i].path, (unsigned long long)mine.size,
                    (unsigned long long)theirs.size,
                    mine.size == theirs.size ? ", other content in the first 4096 bytes" : "");
        if (report_first(world, differs, err)) return -1;
    }
    return 0;
}
