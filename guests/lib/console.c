/* Serial console on the 16550 at 0x3F8 and a printf without 64-bit arithmetic. */
#include "guest.h"

#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_THRE 0x20
#define LCR_DLAB 0x80

void serial_init(void)
{
	outb(0x00, SERIAL_PORT + UART_IER);
	outb(LCR_DLAB, SERIAL_PORT + UART_LCR);
	outb(1, SERIAL_PORT + 0); /* divisor 1: 115200 baud */
	outb(0, SERIAL_PORT + 1);
	outb(0x03, SERIAL_PORT + UART_LCR); /* 8N1 */
	outb(0xc7, SERIAL_PORT + UART_FCR);
	outb(0x03, SERIAL_PORT + UART_MCR);
}

void putchar(char c)
{
	if (c == '\n')
		putchar('\r');
	/* bounded wait: a device that never reports THRE must not hang the test */
	for (int i = 0; i < 100000 && !(inb(SERIAL_PORT + UART_LSR) & LSR_THRE); i++)
		;
	outb((u8)c, SERIAL_PORT + UART_THR);
}

void puts(const char *s)
{
	while (*s)
		putchar(*s++);
}

struct out {
	char *buf;
	int size, len;
};

static void emit(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void emit_number(struct out *o, u32 v, u32 base, bool negative, int width, char pad)
{
	char digits[12];
	int n = 0;
	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (negative)
		digits[n++] = '-';
	for (int i = n; i < width; i++)
		emit(o, pad);
	while (n)
		emit(o, digits[--n]);
}

int vsnprintf(char *buf, int size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			emit(&o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		switch (*fmt) {
		case 'd': {
			s32 v = va_arg(ap, s32);
			emit_number(&o, v < 0 ? -(u32)v : (u32)v, 10, v < 0, width, pad);
			break;
		}
		case 'u':
			emit_number(&o, va_arg(ap, u32), 10, false, width, pad);
			break;
		case 'x':
			emit_number(&o, va_arg(ap, u32), 16, false, width, pad);
			break;
		case 'p':
			emit(&o, '0');
			emit(&o, 'x');
			emit_number(&o, (u32)va_arg(ap, void *), 16, false, 8, '0');
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			for (int n = (int)strlen(s); n < width; n++)
				emit(&o, pad);
			while (*s)
				emit(&o, *s++);
			break;
		}
		case 'c':
			emit(&o, (char)va_arg(ap, int));
			break;
		case '%':
			emit(&o, '%');
			break;
		case '\0':
			fmt--;
			break;
		default:
			emit(&o, '%');
			emit(&o, *fmt);
		}
	}
	if (size > 0)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}

int printf(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* A truncated line still ends its line: the next report line must start on its own. */
	u32 flen = strlen(fmt);
	if (n >= (int)sizeof(buf) && flen > 0 && fmt[flen - 1] == '\n')
		buf[sizeof(buf) - 2] = '\n';
	puts(buf);
	return n;
}
