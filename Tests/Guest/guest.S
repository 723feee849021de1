# mramfs test guest: a tiny multiboot (v1) kernel for qemu-system-x86_64 -kernel.
#
# Written for mramfs; built by scripts/build-guest.sh (as --32, ld -m elf_i386).
# QEMU's multiboot loader only takes 32-bit ELF images, so the file is a 32-bit
# ELF whose tail is .code64.
#
# What it does (all addresses guest-physical unless said otherwise):
#   * reads the memory map from the multiboot info (mmap, else mem_upper);
#   * builds 4-level page tables at 0x200000 (CR3 = 0x200000):
#       PML4 0x200000; PDPT (identity) 0x201000; PDPT (kernel half) 0x202000;
#       PD 0x203000 for VA 0xffffffff80000000 -> PA 0 (PML4[511], PDPT[510]);
#       PDPT[511] of the kernel half -> PD 0x205000 (PA 1 GiB..2 GiB);
#       identity PDs 0x204000 + k*0x1000 (k = 0..7) map the first 8 GiB;
#       all data mappings are 2 MiB pages;
#   * enters long mode and writes the markers:
#       0x300000  "MRAMFS-VIRT-MARKER-0123456789" written through VA 0xffffffff80300000
#       0x400000  "MRAMFS-LOW-MARKER"
#       0x1000000 fake "Linux version ..." banner, NUL-terminated
#       0x2000000 8 MiB pattern: page i (GPA g) = u64 LE (g | 1) repeated,
#                 except pages with i % 7 == 6, which are zero
#       0x3000000 1 MiB of 0xA5 ("stale" region)
#       if RAM reaches 0x140200000: "DRAMHIGH" at 0x140000000 and a 1 MiB
#                 pattern (same rule, i counted from 0x140100000) at 0x140100000
#   * loads RBX = 0x0123456789abcdef, R15 = 0xfeedfacecafebeef,
#     R14 = 0x4d52414d46532121 and writes "READY!!!" at 0x5000;
#   * with interrupts off, polls the i8042 (port 0x64 bit 0, data port 0x60),
#     incrementing the u64 heartbeat counter at 0x5008 on every poll (so a
#     live migration always finds a dirty page and does not finish by itself);
#     the host sends a key with QMP send-key. On the first byte it zeroes the
#     stale region, writes "ZEROED!!" at 0x5000 and halts for good.

        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0x00000003          # align modules, want memory info

        .set PML4,      0x200000
        .set PDPT_LOW,  0x201000
        .set PDPT_HIGH, 0x202000
        .set PD_HIGH,   0x203000
        .set PD_IDENT,  0x204000           # 8 PDs: 0x204000 .. 0x20bfff
        .set PT_END,    0x20c000

        .set READY_ADDR,   0x5000
        .set HEARTBEAT,    0x5008
        .set STACK_TOP,    0x5000
        .set LOW_MARKER,   0x400000
        .set BANNER_ADDR,  0x1000000
        .set PATTERN_ADDR, 0x2000000
        .set PATTERN_LEN,  0x800000
        .set STALE_ADDR,   0x3000000
        .set STALE_LEN,    0x100000
        .set HIGH_MARKER,  0x140000000
        .set HIGH_PATTERN, 0x140100000
        .set HIGH_PAT_LEN, 0x100000

        .text
        .code32
        .globl _start
        .p2align 2
mb_header:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

_start:
        cli
        cld
        movl %ebx, mbi_ptr                 # multiboot info (EAX = 0x2BADB002)
        movl %eax, mb_magic
        lgdt gdt_desc
        ljmp $0x18, $pm32
pm32:
        movl $0x10, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        movl %eax, %fs
        movl %eax, %gs
        movl $STACK_TOP, %esp

        # ---- page tables -------------------------------------------------
        movl $PML4, %edi
        movl $((PT_END - PML4) / 4), %ecx
        xorl %eax, %eax
        rep stosl

        movl $(PDPT_LOW | 3), PML4              # PML4[0]   -> identity PDPT
        movl $(PDPT_HIGH | 3), PML4 + 511 * 8   # PML4[511] -> kernel-half PDPT
        movl $(PD_HIGH | 3), PDPT_HIGH + 510 * 8
        movl $((PD_IDENT + 0x1000) | 3), PDPT_HIGH + 511 * 8

        # identity PDPT entries 0..7 -> PD_IDENT + k*0x1000
        movl $PDPT_LOW, %edi
        movl $(PD_IDENT | 3), %eax
        movl $8, %ecx
1:      movl %eax, (%edi)
        addl $0x1000, %eax
        addl $8, %edi
        loop 1b

        # identity PDs: 8 * 512 entries of 2 MiB, PA = n * 2 MiB (needs 64-bit PA)
        movl $PD_IDENT, %edi
        xorl %ebx, %ebx                    # n
2:      movl %ebx, %eax
        shll $21, %eax                     # low 32 bits of n << 21
        orl $0x83, %eax                    # P | RW | PS
        movl %ebx, %edx
        shrl $11, %edx                     # high bits of n << 21
        movl %eax, (%edi)
        movl %edx, 4(%edi)
        addl $8, %edi
        incl %ebx
        cmpl $(8 * 512), %ebx
        jb 2b

        # kernel-half PD: VA 0xffffffff80000000 + n*2MiB -> PA n*2MiB (1 GiB)
        movl $PD_HIGH, %edi
        movl $0x83, %eax
        movl $512, %ecx
3:      movl %eax, (%edi)
        addl $0x200000, %eax
        addl $8, %edi
        loop 3b

        # ---- long mode ---------------------------------------------------
        movl %cr4, %eax
        orl $0x20, %eax                    # PAE
        movl %eax, %cr4
        movl $PML4, %eax
        movl %eax, %cr3
        movl $0xC0000080, %ecx             # EFER
        rdmsr
        orl $0x100, %eax                   # LME
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax              # PG | PE
        movl %eax, %cr0
        ljmp $0x08, $lm64

        .code64
lm64:
        movl $0x10, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss
        movl %eax, %fs
        movl %eax, %gs
        movl $STACK_TOP, %esp              # zero-extends into RSP

        call parse_mbi                     # -> high_end (u64)

        # VIRT marker through the kernel-half mapping
        movabsq $0xffffffff80300000, %rdi
        movl $virt_marker, %esi
        movl $(virt_marker_end - virt_marker), %ecx
        rep movsb

        movl $LOW_MARKER, %edi
        movl $low_marker, %esi
        movl $(low_marker_end - low_marker), %ecx
        rep movsb

        movl $BANNER_ADDR, %edi
        movl $banner, %esi
        movl $(banner_end - banner), %ecx  # includes the NUL
        rep movsb

        movl $PATTERN_ADDR, %edi
        movl $(PATTERN_LEN / 4096), %ecx
        call fill_pattern

        movl $STALE_ADDR, %edi
        movl $STALE_LEN, %ecx
        movb $0xA5, %al
        rep stosb

        # high RAM: only if [0x140000000, 0x140200000) is RAM
        movq high_end(%rip), %rax
        movabsq $(HIGH_PATTERN + HIGH_PAT_LEN), %rdx
        cmpq %rdx, %rax
        jb no_high
        movabsq $HIGH_MARKER, %rdi
        movabsq $0x484749484d415244, %rax  # "DRAMHIGH"
        movq %rax, (%rdi)
        movabsq $HIGH_PATTERN, %rdi
        movl $(HIGH_PAT_LEN / 4096), %ecx
        call fill_pattern
        movl $1, has_high(%rip)
no_high:

        # recognisable registers
        movabsq $0x0123456789abcdef, %rbx
        movabsq $0xfeedfacecafebeef, %r15
        movabsq $0x4d52414d46532121, %r14

        # drain whatever the keyboard controller still holds
        movl $256, %ecx
4:      inb $0x64, %al
        testb $1, %al
        jz 5f
        inb $0x60, %al
        loop 4b
5:
        mfence
        movabsq $0x2121215944414552, %rax  # "READY!!!"
        movq %rax, READY_ADDR
        mfence

wait_key:
        incq HEARTBEAT                     # keeps a page dirty for live saves
        inb $0x64, %al
        testb $1, %al
        jnz got_key
        movl $20000, %ecx                  # do not hammer the I/O port
6:      pause
        loop 6b
        jmp wait_key

got_key:
        inb $0x60, %al
        movl $STALE_ADDR, %edi
        movl $(STALE_LEN / 8), %ecx
        xorl %eax, %eax
        rep stosq
        mfence
        movabsq $0x212144454f52455a, %rax  # "ZEROED!!"
        movq %rax, READY_ADDR
        mfence
halt:
        cli
        hlt
        jmp halt

# fill_pattern: RDI = base GPA (page aligned), ECX = number of pages.
# Page i gets u64 (GPA | 1) repeated; pages with i % 7 == 6 are zeroed.
fill_pattern:
        movl %ecx, %r8d                    # pages
        xorl %r9d, %r9d                    # i
        xorl %r10d, %r10d                  # i % 7
7:      cmpl %r8d, %r9d
        jae 9f
        movq %rdi, %rax
        orq $1, %rax
        cmpl $6, %r10d
        jne 8f
        xorl %eax, %eax
8:      movl $512, %ecx
        rep stosq                          # advances RDI by 4096
        incl %r9d
        incl %r10d
        cmpl $7, %r10d
        jb 7b
        xorl %r10d, %r10d
        jmp 7b
9:      ret

# parse_mbi: sets high_end = highest end of a type-1 (RAM) region, or
# 1 MiB + mem_upper KiB when there is no memory map.
parse_mbi:
        movl mbi_ptr(%rip), %esi
        movl (%esi), %edx                  # flags
        xorl %eax, %eax
        testl $1, %edx
        jz 1f
        movl 8(%esi), %eax                 # mem_upper (KiB above 1 MiB)
        shlq $10, %rax
        addq $0x100000, %rax
1:      movq %rax, high_end(%rip)
        testl $0x40, %edx
        jz 4f
        movl 44(%esi), %ecx                # mmap_length
        movl 48(%esi), %edi                # mmap_addr
        leaq (%rdi,%rcx), %r8              # end of the map
2:      cmpq %r8, %rdi
        jae 4f
        cmpl $1, 20(%rdi)                  # type 1 = available RAM
        jne 3f
        movq 4(%rdi), %rax                 # base
        addq 12(%rdi), %rax                # + length
        cmpq high_end(%rip), %rax
        jbe 3f
        movq %rax, high_end(%rip)
3:      movl (%rdi), %eax                  # entry size (excludes itself)
        leaq 4(%rdi,%rax), %rdi
        jmp 2b
4:      ret

# ---- data ---------------------------------------------------------------
        .p2align 3
gdt:
        .quad 0                            # 0x00
        .quad 0x00209a0000000000           # 0x08 64-bit code (L=1)
        .quad 0x00cf92000000ffff           # 0x10 data, flat 4 GiB
        .quad 0x00cf9a000000ffff           # 0x18 32-bit code, flat 4 GiB
gdt_end:
        .p2align 2
        .word 0
gdt_desc:
        .word gdt_end - gdt - 1
        .long gdt

        .p2align 3
high_end:  .quad 0
mbi_ptr:   .long 0
mb_magic:  .long 0
has_high:  .long 0

virt_marker:
        .ascii "MRAMFS-VIRT-MARKER-0123456789"
virt_marker_end:
low_marker:
        .ascii "MRAMFS-LOW-MARKER"
low_marker_end:
banner:
        .ascii "Linux version 6.1.0-mramfs-test (mramfs@test) (gcc (Debian 12.2.0-14) 12.2.0, "
        .ascii "GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.0-1 (2026-01-01)\n"
        .byte 0
banner_end:
