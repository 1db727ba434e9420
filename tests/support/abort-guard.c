/*
 * Keeps a test process alive when a thread of librdkafka's mock cluster (the development broker,
 * which tests run inside their own process) fails one of its assertions: abort() in that thread
 * parks the thread instead of ending the process, which would end every test file the bun test
 * worker runs after it. Seen once: rd_kafka_mock_cgrp_member_add's `!member->resp` during a
 * test's teardown. An abort in the main thread still ends the process, as before.
 * Compiled by bun:ffi's TinyCC (abort-guard.ts); no system headers needed.
 */
typedef void (*handler_t)(int);
extern handler_t signal(int sig, handler_t handler);
extern unsigned long pthread_self(void);
extern int pause(void);
extern long write(int fd, const void *buf, unsigned long n);
extern int raise(int sig);

#define SIGABRT 6

static unsigned long main_thread;
static volatile int parked;
static const char said[] =
    "\ntests: a thread of the development broker (librdkafka's mock cluster) failed an assertion and called abort(); "
    "the thread is parked so that this test process lives on, and that broker no longer answers\n";

static void on_abort(int sig) {
  if (pthread_self() == main_thread) {
    signal(sig, (handler_t)0);
    raise(sig);
    return;
  }
  parked++;
  write(2, said, sizeof(said) - 1);
  for (;;) pause();
}

int guard_install(void) {
  main_thread = pthread_self();
  return signal(SIGABRT, on_abort) == (handler_t)-1 ? -1 : 0;
}

int guard_parked(void) { return parked; }
