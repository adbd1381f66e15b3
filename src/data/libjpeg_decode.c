/* JPEG to RGB8 through the system's libjpeg-turbo, set up as tf.image.decode_jpeg sets it up
 * (JDCT_IFAST, fancy upsampling): on the same library version the pixels are the ones
 * TensorFlow/Keras train on, bit for bit. Called from src/data/libjpeg.rs.
 *
 * libjpeg reports fatal errors by calling error_exit, which must not return; here it
 * longjmps back into focalflow_libjpeg_decode, so no jump ever crosses a Rust frame. Warnings
 * ("corrupt JPEG data: N extraneous bytes before marker", common in PetImages) are not
 * printed; decoding goes on, as in TensorFlow and PIL, and the caller gets the first one. */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#define LIBJPEG_TURBO_VERSION_NUMBER 0
#endif

/* Keep in step with the constants in src/data/libjpeg.rs. */
enum {
  FF_JPEG_OK = 0,
  FF_JPEG_ERROR = 1,       /* message in err */
  FF_JPEG_NOT_HANDLED = 2, /* a colour space left to the other decoder (CMYK, YCCK, ...) */
  FF_JPEG_NEED_SPACE = 3,  /* width and height set; call again with width*height*3 bytes */
};

struct error_trap {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char first_warning[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr info) {
  longjmp(((struct error_trap *)info->err)->jump, 1);
}

static void quiet(j_common_ptr info) { (void)info; }

/* Counts warnings (level -1) and keeps the first one's text; trace messages (level >= 0)
 * are dropped. Formatting at once matters: later trace messages overwrite msg_code. */
static void on_message(j_common_ptr info, int level) {
  struct error_trap *trap = (struct error_trap *)info->err;
  if (level >= 0) return;
  if (trap->mgr.num_warnings == 0) trap->mgr.format_message(info, trap->first_warning);
  trap->mgr.num_warnings++;
}

static void set_message(char *err, size_t err_len, const char *message) {
  if (err_len == 0) return;
  strncpy(err, message, err_len - 1);
  err[err_len - 1] = '\0';
}

/* The libjpeg-turbo version these headers belong to (e.g. 2001005 for 2.1.5); 0 for a
 * libjpeg that is not libjpeg-turbo. */
int focalflow_libjpeg_version(void) { return LIBJPEG_TURBO_VERSION_NUMBER; }

/* On FF_JPEG_OK, *warnings is libjpeg's warning count and, when it is not 0, err holds the
 * first warning (the image decoded, as TensorFlow and PIL decode it). */
int focalflow_libjpeg_decode(const unsigned char *data, unsigned long len, unsigned char *out,
                             size_t capacity, unsigned *width, unsigned *height,
                             long *warnings, char *err, size_t err_len) {
  struct jpeg_decompress_struct info;
  struct error_trap trap;
  info.err = jpeg_std_error(&trap.mgr);
  trap.mgr.error_exit = on_error;
  trap.mgr.output_message = quiet;
  trap.mgr.emit_message = on_message;
  trap.first_warning[0] = '\0';
  if (setjmp(trap.jump)) {
    char message[JMSG_LENGTH_MAX];
    trap.mgr.format_message((j_common_ptr)&info, message);
    set_message(err, err_len, message);
    jpeg_destroy_decompress(&info);
    return FF_JPEG_ERROR;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, len);
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space != JCS_YCbCr && info.jpeg_color_space != JCS_GRAYSCALE &&
      info.jpeg_color_space != JCS_RGB) {
    jpeg_destroy_decompress(&info);
    return FF_JPEG_NOT_HANDLED;
  }
  info.out_color_space = JCS_RGB;
  info.dct_method = JDCT_IFAST;
  info.do_fancy_upsampling = TRUE;
  jpeg_calc_output_dimensions(&info);
  *width = info.output_width;
  *height = info.output_height;
  size_t stride = (size_t)info.output_width * 3;
  if (capacity < stride * info.output_height) {
    jpeg_destroy_decompress(&info);
    return FF_JPEG_NEED_SPACE;
  }
  jpeg_start_decompress(&info);
  while (info.output_scanline < info.output_height) {
    /* Several rows a call: libjpeg emits up to rec_outbuf_height at once. */
    JSAMPROW rows[4];
    JDIMENSION n = info.output_height - info.output_scanline;
    if (n > 4) n = 4;
    for (JDIMENSION r = 0; r < n; r++) rows[r] = out + (info.output_scanline + r) * stride;
    if (jpeg_read_scanlines(&info, rows, n) == 0) {
      /* Only a suspending data source returns no rows; jpeg_mem_src never suspends. */
      set_message(err, err_len, "libjpeg returned no scanlines");
      jpeg_destroy_decompress(&info);
      return FF_JPEG_ERROR;
    }
  }
  jpeg_finish_decompress(&info);
  *warnings = trap.mgr.num_warnings;
  if (trap.mgr.num_warnings > 0) set_message(err, err_len, trap.first_warning);
  jpeg_destroy_decompress(&info);
  return FF_JPEG_OK;
}
