// A slow disk for the benchmark: LD_PRELOAD'ed into kexo by `bench/run.ts --fsync-delay-ms N`, it
// sleeps N ms (env KEXO_BENCH_FSYNC_DELAY_US, in µs) before every fsync and fdatasync, as a cloud
// volume's ~1–10 ms flush does. This machine's fsync takes ~0.4 ms, which hides what the journal
// does with the JS thread while the disk flushes.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static void pause_like_a_disk(void) {
  const char *s = getenv("KEXO_BENCH_FSYNC_DELAY_US");
  usleep(s ? (useconds_t)atoi(s) : 2000);
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  pause_like_a_disk();
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  pause_like_a_disk();
  return real(fd);
}
