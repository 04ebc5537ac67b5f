#!/usr/bin/python3
"""Control for random_offset_probe.py: a minimal 2-layer attention-only transformer (LayerNorm,
learned absolute positions with POS=abs, no MLP, no RoPE; d 128, 4 heads) on the same kind of
documents (3 spans of 6-16 symbols over 200 byte values), to tell the reference architecture's
behaviour from the task's: both sit on the ln(200) plateau for the first ~1,400 steps.

    python3 capture/models/probes/attn_only_probe.py T LR POS      e.g. ... 64 1e-3 abs
"""
import sys, time, math, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0); torch.set_num_threads(1)
A=200; T=int(sys.argv[1]); B=4096//T; lr=float(sys.argv[2]); pos=sys.argv[3]
alph=np.arange(256-A,256); rng=np.random.default_rng(5)
def doc(pool=3,smin=6,smax=16):
    spans=[alph[rng.integers(0,A,size=int(rng.integers(smin,smax+1)))] for _ in range(pool)]
    out=[];mask=[];seen=[];n=0
    while n<T:
        j=int(rng.integers(0,pool));s=spans[j];out.append(s);mask.append(np.full(len(s),j in seen));seen.append(j)
        out.append(np.array([32]));mask.append(np.zeros(1,bool));n+=len(s)+1
    return np.concatenate(out)[:T],np.concatenate(mask)[:T]
d=128;H=4
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e=nn.Embedding(257,d); s.p=nn.Embedding(T,d)
        s.qkv=nn.ModuleList([nn.Linear(d,3*d,bias=False) for _ in range(2)]); s.o=nn.ModuleList([nn.Linear(d,d,bias=False) for _ in range(2)])
        s.ln=nn.ModuleList([nn.LayerNorm(d) for _ in range(3)]); s.u=nn.Linear(d,257)
    def forward(s,x):
        h=s.e(x)+(s.p(torch.arange(T)) if pos=="abs" else 0)
        m=torch.full((T,T),float("-inf")).triu(1)
        for l in range(2):
            q,k,v=s.qkv[l](s.ln[l](h)).view(x.shape[0],T,3,H,d//H).permute(2,0,3,1,4)
            a=torch.softmax(q@k.transpose(-1,-2)/math.sqrt(d//H)+m,-1)
            h=h+s.o[l]((a@v).transpose(1,2).reshape(x.shape[0],T,d))
        return s.u(s.ln[2](h))
m=M(); opt=torch.optim.AdamW(m.parameters(),lr=lr,weight_decay=0.0)
t0=time.time()
for step in range(3000):
    for g in opt.param_groups: g["lr"]=lr*min(1,(step+1)/100)
    dd=[doc() for _ in range(B)]; w=np.stack([a for a,_ in dd]).astype(np.int64); mk=torch.from_numpy(np.stack([b for _,b in dd]))
    x=torch.from_numpy(np.concatenate([np.full((B,1),256),w[:,:-1]],1)); y=torch.from_numpy(w)
    lo=F.cross_entropy(m(x).reshape(-1,257),y.reshape(-1),reduction="none").view(B,T)
    opt.zero_grad(); lo.mean().backward(); opt.step()
    if step%50==0: print(step,f"new {lo[~mk].mean().item():.3f} repeat {lo[mk].mean().item():.3f} {time.time()-t0:.0f}s",flush=True)
