//! Exception and interrupt delivery through the guest IDT, and IRET.
