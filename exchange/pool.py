"""The lending pool machine: one asset's pool, the ledger of record for its lends and borrows.

Each request is handled atomically (a redeem and a borrow together, or neither); interest is
accrued on the scheduler's hourly tick and each account is told what was added to its lend or
borrow; a bankrupt borrower's debt is written off on the liquidator's word (spec F7).
"""

from __future__ import annotations

from exchange.decimals import ZERO, floor_to
from exchange.lending import Grant, LendingPool
from exchange.machine import Machine
from exchange.orders import Rejection
from exchange.protocol import (
    BorrowWrittenOff,
    InterestNotice,
    LendWrittenOff,
    PoolReply,
    PoolRequest,
    Tick,
    WriteOff,
    WrittenOff,
    account_address,
    pool_address,
)


class PoolMachine(Machine):
    handlers = {PoolRequest: "on_request", Tick: "on_tick", WriteOff: "on_write_off"}

    def __init__(self, pool: LendingPool, settlement_step: object) -> None:
        super().__init__(pool_address(pool.asset))
        self.pool = pool
        self.settlement_step = settlement_step

    def on_request(self, sender: str, message: PoolRequest) -> None:
        pool, account = self.pool, message.account
        result: list[Grant] | Grant | Rejection
        if message.lend:
            result = pool.lend(account, message.lend)
        elif message.repay:
            result = pool.repay(account, message.repay)
        elif message.liquidation:
            # System-initiated (settlement, liquidation): redeem then borrow, each on its own,
            # allowed past the throttle up to the hard cap.
            grants: list[Grant] = []
            result = grants
            for action, quantity in (("redeem", message.redeem), ("borrow", message.borrow)):
                if not quantity:
                    continue
                done = (pool.redeem(account, quantity, liquidation=True) if action == "redeem"
                        else pool.borrow(account, quantity, self.now_ms, liquidation=True))
                if isinstance(done, Rejection):
                    result = done if not grants else grants  # keep what was granted before
                    break
                grants.append(done)
        else:
            result = pool.draw(account, message.redeem, message.borrow, self.now_ms)
        if isinstance(result, Rejection):
            self.emit("pool_refused", account=account, purpose=message.purpose, code=result.code,
                          message=result.message)
            self.send(sender, PoolReply(message.request_id, (), result))
            return
        grants = [result] if isinstance(result, Grant) else result
        for grant in grants:
            self.emit("pool_" + grant.action, account=account, quantity=grant.quantity,
                          entry_fee=grant.entry_fee, purpose=message.purpose, utilization=pool.utilization)
        self.send(sender, PoolReply(message.request_id, tuple(grants)))
        waived = pool.waive_entry_fee(account, message.waive_fee) if message.repay and message.waive_fee else ZERO
        if waived:  # told like interest: it changes the debt, not the cash
            self.emit("entry_fee_waived", account=account, quantity=waived)
            self.send(sender, InterestNotice(pool.asset, -waived, ZERO, pool.borrow_rate(), pool.lend_rate()))

    def on_tick(self, sender: str, message: Tick) -> None:
        pool = self.pool
        if message.kind != "interest":
            return
        if not pool.borrowed and not pool.undistributed:
            pool.last_tick_ms = message.time_ms
            return
        tick = pool.accrue(message.time_ms)
        self.emit("interest_accrued", borrow_rate=tick.borrow_rate, lend_rate=tick.lend_rate,
                      utilization=tick.utilization, paid=tick.paid_by_borrowers, credited=tick.credited_to_lenders,
                      exchange_fee=tick.exchange_fee, borrow_interest=tick.borrow_interest,
                      lend_interest=tick.lend_interest)
        for account in sorted(set(tick.borrow_interest) | set(tick.lend_interest)):
            self.send(account_address(account), InterestNotice(
                pool.asset, tick.borrow_interest.get(account, ZERO), tick.lend_interest.get(account, ZERO),
                tick.borrow_rate, tick.lend_rate,
            ))

    def on_write_off(self, sender: str, message: WriteOff) -> None:
        debt = self.pool.borrowers.get(message.account, ZERO)
        shares = self.pool.write_off(message.account)
        paid = sum((floor_to(q * message.price, self.settlement_step) for q in shares.values()), ZERO)  # type: ignore[arg-type]
        self.emit("write_off", account=message.account, debt=debt, price=message.price, paid=paid, shares=shares)
        for lender, quantity in shares.items():
            self.send(account_address(lender), LendWrittenOff(self.pool.asset, quantity))
        self.send(account_address(message.account), BorrowWrittenOff(self.pool.asset, debt, paid))
        self.send(sender, WrittenOff(message.account, self.pool.asset, debt, shares, message.price))
