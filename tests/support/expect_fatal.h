/* expect_fatal.h: runs a misuse of an API in a forked child and asserts it is fatal (exit 1) with a message. */
#ifndef RT_EXPECT_FATAL_H
#define RT_EXPECT_FATAL_H

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/core/common.h"
#include "tests/support/testing.h"

static void test_child_abort(int exit_code) { _exit(exit_code); }

/* misuse(arg) in a child whose stderr is captured; it must exit 1 (rt_fatal's status, through the abort hook)
 * and say `message`. alarm_s > 0 bounds a child that would otherwise wait (on peers that never come). */
static inline void test_expect_fatal(void (*misuse)(void *arg), void *arg, unsigned alarm_s, const char *message) {
    int pipe_fds[2];
    CU_ASSERT_EQUAL_FATAL(pipe(pipe_fds), 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        dup2(pipe_fds[1], STDERR_FILENO);
        close(pipe_fds[0]);
        rt_set_abort_hook(test_child_abort);
        if (alarm_s) alarm(alarm_s);
        misuse(arg);
        _exit(0); /* not caught */
    }
    close(pipe_fds[1]);
    char text[2048] = {0};
    size_t len = 0;
    ssize_t got;
    while (len < sizeof text - 1 && (got = read(pipe_fds[0], text + len, sizeof text - 1 - len)) > 0)
        len += (size_t)got;
    close(pipe_fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    if (!strstr(text, message)) fprintf(stderr, "\n  expected \"%s\" in: %s\n", message, text);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, message));
}

#endif
