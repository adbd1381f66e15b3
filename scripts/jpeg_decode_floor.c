/* The floor under the preprocessing anchors: how long libjpeg-turbo, the decoder inside
 * both PIL and tf.image.decode_jpeg, takes to decode each JPEG to RGB8 with nothing around
 * it (no file reads, no Python, no resize), set up as tf.image.decode_jpeg sets it up
 * (integer-fast IDCT, fancy chroma upsampling; PIL uses the slower accurate IDCT).
 *
 *   cc -O2 scripts/jpeg_decode_floor.c -o target/jpeg_decode_floor -ljpeg
 *   target/jpeg_decode_floor target/preprocess-bench/photo_*.jpg
 *
 * Prints one JSON line for scripts/preprocess_anchor.sh: the best of 5 rounds of CPU time
 * per image, one thread. A file that libjpeg rejects ends the run with its name. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#define LIBJPEG_TURBO_VERSION_NUMBER 0
#endif

struct error_trap {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
};

static void on_error(j_common_ptr info) {
  longjmp(((struct error_trap *)info->err)->jump, 1);
}

static double cpu_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static unsigned char *read_file(const char *path, unsigned long *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *len = (unsigned long)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *data = malloc(*len);
  if (data && fread(data, 1, *len, f) != *len) {
    free(data);
    data = NULL;
  }
  fclose(f);
  return data;
}

/* Decodes one JPEG into out (at least width*height*3 bytes); 0 on success. */
static int decode(const unsigned char *data, unsigned long len, unsigned char *out,
                  size_t capacity) {
  struct jpeg_decompress_struct info;
  struct error_trap trap;
  info.err = jpeg_std_error(&trap.mgr);
  trap.mgr.error_exit = on_error;
  if (setjmp(trap.jump)) {
    jpeg_destroy_decompress(&info);
    return 1;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, len);
  jpeg_read_header(&info, TRUE);
  info.out_color_space = JCS_RGB;
  info.dct_method = JDCT_IFAST;
  jpeg_start_decompress(&info);
  size_t stride = (size_t)info.output_width * 3;
  if (stride * info.output_height > capacity) longjmp(trap.jump, 1);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out + info.output_scanline * stride;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return 0;
}

int main(int argc, char **argv) {
  int n = argc - 1;
  if (n < 1) {
    fprintf(stderr, "usage: %s FILE.jpg...\n", argv[0]);
    return 2;
  }
  unsigned char **files = calloc(n, sizeof *files);
  unsigned long *lens = calloc(n, sizeof *lens);
  for (int i = 0; i < n; i++) {
    files[i] = read_file(argv[i + 1], &lens[i]);
    if (!files[i]) {
      fprintf(stderr, "%s: cannot read\n", argv[i + 1]);
      return 1;
    }
  }
  size_t capacity = (size_t)8192 * 8192 * 3;
  unsigned char *out = malloc(capacity);
  double best = 1e30;
  for (int round = 0; round < 5; round++) {
    double start = cpu_seconds();
    for (int i = 0; i < n; i++) {
      if (decode(files[i], lens[i], out, capacity)) {
        fprintf(stderr, "%s: libjpeg could not decode it\n", argv[i + 1]);
        return 1;
      }
    }
    double ms = (cpu_seconds() - start) / n * 1e3;
    if (ms < best) best = ms;
  }
  printf("{\"tool\": \"libjpeg-turbo decode only\", \"version\": %d, \"images\": %d, "
         "\"cpu_ms_1\": %.3f}\n",
         LIBJPEG_TURBO_VERSION_NUMBER, n, best);
  return 0;
}
